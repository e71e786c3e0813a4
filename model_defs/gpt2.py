"""Inference-only GPT-2 (learned positions, Conv1D weights, pre-LayerNorm) compatible with HuggingFace weights."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.model_defs.base import CausalLM
from llmctl.model_defs.layers.act_fn import get_act_fn
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.layernorm import LayerNorm
from llmctl.model_defs.layers.layout_linear import Conv1DLinear
from llmctl.model_defs.weights_mapper import WeightsMapper


class GPT2Attention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.hidden_size = config.n_embd
        num_heads = config.n_head
        head_dim = self.hidden_size // num_heads
        scale = head_dim**-0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):  # Stanford CRFM's Mistral GPT-2 runs
            scale /= layer_idx + 1
        self.c_attn = Conv1DLinear(self.hidden_size, 3 * self.hidden_size)
        self.c_proj = Conv1DLinear(self.hidden_size, self.hidden_size)
        self.attn = Attention(num_heads, head_dim, scale, num_heads, layer_idx)

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.c_attn(hidden_states).split(self.hidden_size, dim=-1)  # 3 x (T, H)
        return self.c_proj(self.attn(q, k, v, ctx))


class GPT2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.c_fc = Conv1DLinear(config.n_embd, inner)
        self.c_proj = Conv1DLinear(inner, config.n_embd)
        self.act = get_act_fn(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))  # (T, H) -> (T, I) -> (T, H)


class GPT2Block(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states), ctx)
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class GPT2Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = VocabEmbedding(config.vocab_size, config.n_embd)
        self.wpe = VocabEmbedding(config.n_positions, config.n_embd)  # learned absolute positions
        self.h = nn.ModuleList([GPT2Block(config, i) for i in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = self.wte(input_ids) + self.wpe(positions)  # (T, H)
        for block in self.h:
            hidden_states = block(hidden_states, ctx)
        return self.ln_f(hidden_states)


class GPT2LMHeadModel(CausalLM):
    backbone_cls = GPT2Model
    backbone_name = "transformer"
    input_embedding_name = "wte"
    tie_word_embeddings_default = True
    # The hub's original gpt2 / distilgpt2 checkpoints were saved from the bare GPT2Model (no "transformer."),
    # with the causal-mask buffers attn.bias / attn.masked_bias among the tensors.
    weights_mapper = WeightsMapper(base_prefix="transformer", ignored_suffixes=(".attn.bias", ".attn.masked_bias"))
