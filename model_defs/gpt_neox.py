"""Inference-only GPT-NeoX (Pythia, GPT-NeoX-20B, StableLM-alpha) compatible with HuggingFace weights."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.model_defs.base import CausalLM
from llmctl.model_defs.layers.act_fn import get_act_fn
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.layernorm import LayerNorm
from llmctl.model_defs.layers.layout_linear import HeadInterleavedQKVLinear
from llmctl.model_defs.layers.linear import Linear
from llmctl.model_defs.layers.rotary import get_rope_from_config
from llmctl.model_defs.weights_mapper import WeightsMapper


class GPTNeoXAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        num_heads = config.num_attention_heads
        head_dim = config.hidden_size // num_heads
        bias = getattr(config, "attention_bias", True)
        # query_key_value is stored per head (nh, 3, hd) in the checkpoint; loading regroups it to q | k | v.
        self.query_key_value = HeadInterleavedQKVLinear(config.hidden_size, head_dim, num_heads, bias=bias)
        self.dense = Linear(config.hidden_size, config.hidden_size, bias=bias)
        # Partial rotary: the first rotary_pct of each head's dims, neox (half-split) style.
        self.rotary_emb = get_rope_from_config(config, head_dim, is_neox_style=True)
        self.attn = Attention(num_heads, head_dim, head_dim**-0.5, num_heads, layer_idx)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.query_key_value(hidden_states).chunk(3, dim=-1)  # 3 x (T, H)
        # The attention layer applies the rope: with a KV cache it rotates q/k and writes k/v in one kernel.
        return self.dense(self.attn(q, k, v, ctx, rope=self.rotary_emb, positions=positions))


class GPTNeoXMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = Linear(config.intermediate_size, config.hidden_size)
        self.act = get_act_fn(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))  # (T, H) -> (T, I) -> (T, H)


class GPTNeoXLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        # Pythia and NeoX-20B run attention and MLP side by side; use_parallel_residual=False chains them.
        self.use_parallel_residual = getattr(config, "use_parallel_residual", True)
        self.input_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = GPTNeoXAttention(config, layer_idx)
        self.mlp = GPTNeoXMLP(config)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        attn_output = self.attention(positions, self.input_layernorm(hidden_states), ctx)
        if self.use_parallel_residual:  # x + attn(ln1(x)) + mlp(ln2(x))
            mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
            return mlp_output + attn_output + hidden_states
        attn_output = attn_output + hidden_states  # x + attn(ln1(x)), then + mlp(ln2(.))
        return self.mlp(self.post_attention_layernorm(attn_output)) + attn_output


class GPTNeoXModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_in = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([GPTNeoXLayer(config, i) for i in range(config.num_hidden_layers)])
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = self.embed_in(input_ids)  # (T, H)
        for layer in self.layers:
            hidden_states = layer(positions, hidden_states, ctx)
        return self.final_layer_norm(hidden_states)


class GPTNeoXForCausalLM(CausalLM):
    backbone_cls = GPTNeoXModel
    backbone_name = "gpt_neox"
    input_embedding_name = "embed_in"
    lm_head_name = "embed_out"  # the hub checkpoints' name for the head
    # Older Pythia / NeoX-20B checkpoints keep the causal-mask buffers (and the rotary inv_freq, always ignored).
    weights_mapper = WeightsMapper(ignored_suffixes=(".attention.bias", ".attention.masked_bias"))
