"""Inference-only GPT-J (interleaved rotary on rotary_dim, parallel attention + MLP) compatible with HF weights."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.model_defs.base import CausalLM
from llmctl.model_defs.layers.act_fn import get_act_fn
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.layernorm import LayerNorm
from llmctl.model_defs.layers.linear import Linear, QKVLinear
from llmctl.model_defs.layers.rotary import get_rope_from_config
from llmctl.model_defs.weights_mapper import QKV_PACKED, WeightsMapper


class GPTJAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        num_heads = config.n_head
        head_dim = config.n_embd // num_heads
        self.qkv_proj = QKVLinear(config.n_embd, head_dim, num_heads, num_heads, bias=False)
        self.out_proj = Linear(config.n_embd, config.n_embd, bias=False)
        # GPT-J rotates pairs (2i, 2i+1) of the first rotary_dim dims of each head (rotate_every_two).
        self.rotary_emb = get_rope_from_config(config, head_dim, is_neox_style=False)
        self.attn = Attention(num_heads, head_dim, head_dim**-0.5, num_heads, layer_idx)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).chunk(3, dim=-1)  # 3 x (T, H)
        # The attention layer applies the rope: with a KV cache it rotates q/k and writes k/v in one kernel.
        return self.out_proj(self.attn(q, k, v, ctx, rope=self.rotary_emb, positions=positions))


class GPTJMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.fc_in = Linear(config.n_embd, inner)
        self.fc_out = Linear(inner, config.n_embd)
        self.act = get_act_fn(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))  # (T, H) -> (T, I) -> (T, H)


class GPTJBlock(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPTJAttention(config, layer_idx)
        self.mlp = GPTJMLP(config)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        normed = self.ln_1(hidden_states)  # attention and MLP both read the same normed input
        return self.attn(positions, normed, ctx) + self.mlp(normed) + hidden_states


class GPTJModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = VocabEmbedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList([GPTJBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = self.wte(input_ids)  # (T, H)
        for block in self.h:
            hidden_states = block(positions, hidden_states, ctx)
        return self.ln_f(hidden_states)


class GPTJForCausalLM(CausalLM):
    backbone_cls = GPTJModel
    backbone_name = "transformer"
    input_embedding_name = "wte"
    lm_head_bias = True
    # EleutherAI/gpt-j-6b's checkpoint carries the causal-mask buffers of its attention layers.
    weights_mapper = WeightsMapper(ignored_suffixes=(".attn.bias", ".attn.masked_bias"), packed=QKV_PACKED)
