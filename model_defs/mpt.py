"""Inference-only MPT models (mosaicml/mpt-7b, mpt-30b) compatible with HF weights."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.model_defs.base import CausalLM
from llmctl.model_defs.layers.act_fn import GELU
from llmctl.model_defs.layers.alibi import mpt_alibi_slopes
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.linear import Linear
from llmctl.model_defs.weights_mapper import WeightsMapper


def attn_config_value(config, key: str, default=None):
    """One attn_config entry: a dict in hub config.json files, an MptAttentionConfig in transformers."""
    attn_config = getattr(config, "attn_config", None)
    if isinstance(attn_config, dict):
        value = attn_config.get(key)
    else:
        value = getattr(attn_config, key, None)
    return default if value is None else value


class MptAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.num_heads = config.n_heads
        self.head_dim = config.d_model // self.num_heads
        # mpt-30b-instruct and others clip the fused projection; None (most configs) means no clipping.
        self.clip_qkv = attn_config_value(config, "clip_qkv")
        self.Wqkv = Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out_proj = Linear(config.d_model, config.d_model, bias=False)
        scale = attn_config_value(config, "softmax_scale", self.head_dim**-0.5)
        # transformers builds the bias with the default alibi_bias_max of 8 whatever the config says;
        # every released MPT config stores 8, so reading it from the config agrees with them.
        slopes = mpt_alibi_slopes(self.num_heads, attn_config_value(config, "alibi_bias_max", 8))
        self.attn = Attention(self.num_heads, self.head_dim, scale, self.num_heads, layer_idx, alibi_slopes=slopes)

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        qkv = self.Wqkv(hidden_states)  # (T, 3H): q | k | v
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.chunk(3, dim=-1)
        return self.out_proj(self.attn(q, k, v, ctx))


class MptMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = int(getattr(config, "expansion_ratio", 4) * config.d_model)
        self.up_proj = Linear(config.d_model, inner, bias=False)
        self.act = GELU("none")
        self.down_proj = Linear(inner, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class MptBlock(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.norm_1 = nn.LayerNorm(config.d_model, eps=eps, bias=False)  # MPT's norms carry no bias
        self.attn = MptAttention(config, layer_idx)
        self.norm_2 = nn.LayerNorm(config.d_model, eps=eps, bias=False)
        self.ffn = MptMLP(config)

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm_1(hidden_states), ctx)
        return hidden_states + self.ffn(self.norm_2(hidden_states))


class MptModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = VocabEmbedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList([MptBlock(config, i) for i in range(config.n_layers)])
        self.norm_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        # No position embedding: ALiBi in every attention layer carries the positions.
        hidden_states = self.wte(input_ids)  # (T, H)
        for block in self.blocks:
            hidden_states = block(hidden_states, ctx)
        return self.norm_f(hidden_states)


class MPTForCausalLM(CausalLM):
    backbone_cls = MptModel
    backbone_name = "transformer"
    input_embedding_name = "wte"
    tie_word_embeddings_default = True
    weights_mapper = WeightsMapper(base_prefix="transformer")


class MptForCausalLM(MPTForCausalLM):
    # The architecture string transformers writes when it saves an MPT model (hub configs say MPTForCausalLM).
    pass
