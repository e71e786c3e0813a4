"""Inference-only StarCoder2 models compatible with HF weights."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.model_defs.layers.act_fn import get_act_fn
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.layernorm import LayerNorm
from llmctl.model_defs.layers.linear import Linear, QKVLinear
from llmctl.model_defs.layers.rotary import get_rope_from_config
from llmctl.model_defs.base import CausalLM, head_dim_of, num_kv_heads_of
from llmctl.model_defs.weights_mapper import QKV_PACKED, WeightsMapper

__all__ = ["Starcoder2ForCausalLM"]


def _use_bias(config) -> bool:
    # transformers' Starcoder2Config defaults use_bias to True (configs without the key have biases).
    return getattr(config, "use_bias", True)


class Starcoder2Attention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = num_kv_heads_of(config)
        self.head_dim = head_dim_of(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = _use_bias(config)

        self.qkv_proj = QKVLinear(config.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=bias)
        self.rotary_emb = get_rope_from_config(config, self.head_dim, is_neox_style=True)
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            self.head_dim**-0.5,
            self.num_kv_heads,
            layer_idx,
            # Every layer slides when config.sliding_window is set, as in transformers; None: full attention.
            sliding_window=getattr(config, "sliding_window", None),
        )

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # The attention layer applies the rope: with a KV cache it rotates q/k and writes k/v in one kernel.
        return self.o_proj(self.attn(q, k, v, ctx, rope=self.rotary_emb, positions=positions))


class Starcoder2MLP(nn.Module):
    """x (T, H) -> c_proj(act(c_fc(x))) (T, H): a plain GELU MLP, not gated."""

    def __init__(self, config):
        super().__init__()
        bias = _use_bias(config)
        self.c_fc = Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.c_proj = Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act = get_act_fn(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Starcoder2DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.self_attn = Starcoder2Attention(config, layer_idx)
        self.mlp = Starcoder2MLP(config)
        self.input_layernorm = LayerNorm(config.hidden_size, eps=config.norm_epsilon)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, eps=config.norm_epsilon)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(positions, self.input_layernorm(hidden_states), ctx)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Starcoder2Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([Starcoder2DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LayerNorm(config.hidden_size, eps=config.norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)  # (T, H)
        for layer in self.layers:
            hidden_states = layer(positions, hidden_states, ctx)
        return self.norm(hidden_states)


class Starcoder2ForCausalLM(CausalLM):
    backbone_cls = Starcoder2Model
    tie_word_embeddings_default = True  # transformers' Starcoder2Config ties by default (hub configs may omit the key)
    weights_mapper = WeightsMapper(packed=QKV_PACKED)
