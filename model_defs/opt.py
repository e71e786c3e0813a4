"""Inference-only OPT models (facebook/opt-*) compatible with HF weights."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.model_defs.base import CausalLM
from llmctl.model_defs.layers.act_fn import get_act_fn
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import LMHead, VocabEmbedding
from llmctl.model_defs.layers.linear import Linear, QKVLinear
from llmctl.model_defs.weights_mapper import QKV_PACKED, WeightsMapper

# OPT's learned position table starts at row 2 (fairseq reserved rows 0-1 for padding).
POSITION_OFFSET = 2


def _layer_norm(config, size: int) -> nn.LayerNorm:
    # layer_norm_elementwise_affine=False (no weight, no bias) exists only in configs converted from metaseq.
    return nn.LayerNorm(size, elementwise_affine=getattr(config, "layer_norm_elementwise_affine", True))


class OPTAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        bias = getattr(config, "enable_bias", True)
        self.qkv_proj = QKVLinear(config.hidden_size, self.head_dim, self.num_heads, self.num_heads, bias)
        self.out_proj = Linear(config.hidden_size, config.hidden_size, bias=bias)
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5, self.num_heads, layer_idx)

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).chunk(3, dim=-1)  # 3 x (T, H)
        return self.out_proj(self.attn(q, k, v, ctx))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        bias = getattr(config, "enable_bias", True)
        # True for every OPT size but 350m, which normalises after each residual add.
        self.do_layer_norm_before = config.do_layer_norm_before
        self.self_attn = OPTAttention(config, layer_idx)
        self.self_attn_layer_norm = _layer_norm(config, config.hidden_size)
        self.fc1 = Linear(config.hidden_size, config.ffn_dim, bias=bias)
        self.activation_fn = get_act_fn(config.activation_function)
        self.fc2 = Linear(config.ffn_dim, config.hidden_size, bias=bias)
        self.final_layer_norm = _layer_norm(config, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        residual = hidden_states
        if self.do_layer_norm_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states = residual + self.self_attn(hidden_states, ctx)
        if not self.do_layer_norm_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        residual = hidden_states
        if self.do_layer_norm_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = residual + self.fc2(self.activation_fn(self.fc1(hidden_states)))
        if not self.do_layer_norm_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states


class OPTDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        proj_dim = getattr(config, "word_embed_proj_dim", None) or config.hidden_size
        self.embed_tokens = VocabEmbedding(config.vocab_size, proj_dim)
        self.embed_positions = VocabEmbedding(config.max_position_embeddings + POSITION_OFFSET, config.hidden_size)
        # opt-350m embeds in 512 dims and projects to/from its 1024-dim hidden size.
        projected = proj_dim != config.hidden_size
        self.project_in = Linear(proj_dim, config.hidden_size, bias=False) if projected else None
        self.project_out = Linear(config.hidden_size, proj_dim, bias=False) if projected else None
        self.layers = nn.ModuleList([OPTDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        # _remove_final_layer_norm: only in configs of checkpoints converted before the final norm existed.
        has_final = config.do_layer_norm_before and not getattr(config, "_remove_final_layer_norm", False)
        self.final_layer_norm = _layer_norm(config, config.hidden_size) if has_final else None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        inputs_embeds = self.embed_tokens(input_ids)  # (T, proj_dim)
        if self.project_in is not None:
            inputs_embeds = self.project_in(inputs_embeds)
        hidden_states = inputs_embeds + self.embed_positions(positions + POSITION_OFFSET)  # (T, H)
        for layer in self.layers:
            hidden_states = layer(hidden_states, ctx)
        if self.final_layer_norm is not None:
            hidden_states = self.final_layer_norm(hidden_states)
        if self.project_out is not None:
            hidden_states = self.project_out(hidden_states)
        return hidden_states  # (T, proj_dim)


class OPTModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.decoder = OPTDecoder(config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.decoder(input_ids, positions, ctx)


class OPTForCausalLM(CausalLM):
    backbone_cls = OPTModel
    input_embedding_name = "decoder.embed_tokens"
    tie_word_embeddings_default = True
    # facebook/opt-* checkpoints were saved from OPTModel: their names start at "decoder.".
    weights_mapper = WeightsMapper(base_prefix="model", packed=QKV_PACKED)

    def build_lm_head(self, config) -> LMHead:
        # opt-350m's head reads the 512-dim projection, not the 1024-dim hidden size.
        return LMHead(config.vocab_size, getattr(config, "word_embed_proj_dim", None) or config.hidden_size)
