"""Inference-only Phi-1 / Phi-1.5 / Phi-2 (partial rotary, parallel attention + MLP) compatible with HF weights."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.model_defs.base import CausalLM, head_dim_of, num_kv_heads_of
from llmctl.model_defs.layers.act_fn import get_act_fn
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.layernorm import LayerNorm
from llmctl.model_defs.layers.linear import Linear, QKVLinear
from llmctl.model_defs.layers.rotary import get_rope_from_config
from llmctl.model_defs.weights_mapper import QKV_PACKED, WeightsMapper


class PhiAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = num_kv_heads_of(config)
        self.head_dim = head_dim_of(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = QKVLinear(config.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, bias=True)
        self.dense = Linear(self.q_size, config.hidden_size, bias=True)
        self.qk_layernorm = getattr(config, "qk_layernorm", False)
        if self.qk_layernorm:  # LayerNorm over each head of q and k before rope
            self.q_layernorm = LayerNorm(self.head_dim, eps=config.layer_norm_eps)
            self.k_layernorm = LayerNorm(self.head_dim, eps=config.layer_norm_eps)
        self.rotary_emb = get_rope_from_config(config, self.head_dim, is_neox_style=True)  # partial_rotary_factor
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5, self.num_kv_heads, layer_idx)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_layernorm:
            q = self.q_layernorm(q.reshape(-1, self.num_heads, self.head_dim)).reshape(-1, self.q_size)
            k = self.k_layernorm(k.reshape(-1, self.num_kv_heads, self.head_dim)).reshape(-1, self.kv_size)
        # The attention layer applies the rope: with a KV cache it rotates q/k and writes k/v in one kernel.
        return self.dense(self.attn(q, k, v, ctx, rope=self.rotary_emb, positions=positions))


class PhiMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size)
        self.activation_fn = get_act_fn(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))  # (T, H) -> (T, I) -> (T, H)


class PhiDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = PhiAttention(config, layer_idx)
        self.mlp = PhiMLP(config)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        normed = self.input_layernorm(hidden_states)  # attention and MLP both read the same normed input
        return self.self_attn(positions, normed, ctx) + self.mlp(normed) + hidden_states


class PhiModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([PhiDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.final_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)  # (T, H)
        for layer in self.layers:
            hidden_states = layer(positions, hidden_states, ctx)
        return self.final_layernorm(hidden_states)


class PhiForCausalLM(CausalLM):
    backbone_cls = PhiModel
    lm_head_bias = True
    weights_mapper = WeightsMapper(packed=QKV_PACKED)
