"""Inference-only BLOOM models (bigscience/bloom*, bloomz*) compatible with HF weights."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.model_defs.base import CausalLM
from llmctl.model_defs.layers.act_fn import GELU
from llmctl.model_defs.layers.alibi import bloom_alibi_slopes
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.linear import Linear
from llmctl.model_defs.weights_mapper import WeightsMapper


class BloomAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        # Fused per head: output rows are [q_h | k_h | v_h] for head h = 0, 1, ... (not q | k | v).
        self.query_key_value = Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.dense = Linear(config.hidden_size, config.hidden_size, bias=True)
        # transformers adds slope * key_position to the scaled scores; the kernel adds slope * (key - query)
        # position, which differs by a constant per query row that the softmax cancels.
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            self.head_dim**-0.5,
            self.num_heads,
            layer_idx,
            alibi_slopes=bloom_alibi_slopes(self.num_heads),
        )

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        qkv = self.query_key_value(hidden_states).view(-1, self.num_heads, 3, self.head_dim)  # (T, nh, 3, hd)
        q, k, v = (qkv[:, :, i].reshape(-1, self.num_heads * self.head_dim) for i in range(3))
        return self.dense(self.attn(q, k, v, ctx))


class BloomMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = Linear(config.hidden_size, 4 * config.hidden_size)
        self.gelu_impl = GELU("tanh")  # BLOOM's bias-gelu is the tanh approximation
        self.dense_4h_to_h = Linear(4 * config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.gelu_impl(self.dense_h_to_4h(x)))


class BloomBlock(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.self_attention = BloomAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = BloomMLP(config)
        # False in every released BLOOM; True adds the normalised input back instead of the raw one.
        self.residual_post_norm = getattr(config, "apply_residual_connection_post_layernorm", False)

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        normed = self.input_layernorm(hidden_states)
        residual = normed if self.residual_post_norm else hidden_states
        hidden_states = residual + self.self_attention(normed, ctx)
        normed = self.post_attention_layernorm(hidden_states)
        residual = normed if self.residual_post_norm else hidden_states
        return residual + self.mlp(normed)


class BloomModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.word_embeddings_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.h = nn.ModuleList([BloomBlock(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        # No position embedding: ALiBi in every attention layer carries the positions.
        hidden_states = self.word_embeddings_layernorm(self.word_embeddings(input_ids))  # (T, H)
        for block in self.h:
            hidden_states = block(hidden_states, ctx)
        return self.ln_f(hidden_states)


class BloomForCausalLM(CausalLM):
    backbone_cls = BloomModel
    backbone_name = "transformer"
    input_embedding_name = "word_embeddings"
    tie_word_embeddings_default = True
    # bigscience/bloom* checkpoints were saved from BloomModel: their names lack "transformer.".
    weights_mapper = WeightsMapper(base_prefix="transformer")
