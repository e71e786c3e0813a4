"""Inference-only Qwen (v1: Qwen-1.8B / 7B / 14B / 72B, QWenLMHeadModel) models compatible with HF weights.

The hub checkpoints ship their own modeling code; this reads the same weights without running it. Within
config.seq_length it computes what transformers' Qwen2 computes with q/k/v biases and as many k/v heads as
query heads (tests/models/test_qwen.py holds it to that). Past seq_length the remote code scales each query by
log(position) / log(seq_length) (use_logn_attn), which this file does too, and, for a prompt longer than
seq_length, rescales the rope base by a dynamic NTK factor picked from that prompt's length (use_dynamic_ntk),
which it does not: such configs take prompts up to seq_length (core/config_keys.py: qwen_prompt_limit), whose
generations the remote code runs with the rope base as is, as here, up to max_position_embeddings.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llmctl.core.config_keys import qwen_prompt_limit
from llmctl.model_defs.base import CausalLM
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.linear import Linear
from llmctl.model_defs.layers.mlp import GatedMLP
from llmctl.model_defs.layers.norm import RMSNorm, norm_then_linear
from llmctl.model_defs.layers.rotary import get_rope
from llmctl.model_defs.weights_mapper import WeightsMapper

__all__ = ["QWenLMHeadModel"]


def _get(config, name: str, default):
    # Defaults of the remote QWenConfig (configuration_qwen.py), for config.json files that leave a key out.
    value = getattr(config, name, None)
    return default if value is None else value


def _linear_bias(config) -> bool:
    return not _get(config, "no_bias", True)  # every released Qwen v1 checkpoint has no_bias: true


def logn_scale(positions: torch.Tensor, seq_length: int) -> torch.Tensor:
    """(T,) -> (T,): Qwen's logn attention factor, log(p + 1) / log(seq_length) past seq_length, else 1."""
    return (positions.float() + 1).log().div(math.log(seq_length)).clamp_min(1.0)


class QWenAttention(nn.Module):
    def __init__(self, config, layer_idx: int, max_position: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = int(_get(config, "kv_channels", config.hidden_size // self.num_heads))
        projection = self.num_heads * self.head_dim
        # c_attn always carries a bias (nn.Linear's default in the remote code); c_proj follows no_bias.
        self.c_attn = Linear(config.hidden_size, 3 * projection, bias=True)  # q|k|v, one head count for all three
        self.c_proj = Linear(projection, config.hidden_size, bias=_linear_bias(config))
        rotary_dim = int(self.head_dim * float(_get(config, "rotary_pct", 1.0)))
        base = float(_get(config, "rotary_emb_base", 10000.0))
        self.rotary_emb = get_rope(self.head_dim, rotary_dim, max_position, base, None, is_neox_style=True)
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5, self.num_heads, layer_idx)
        seq_length = int(_get(config, "seq_length", max_position))
        # The factor is 1 up to seq_length: only a model served past it needs the multiply.
        self.logn_seq_length = seq_length if _get(config, "use_logn_attn", True) and max_position > seq_length else None

    def forward(self, positions: torch.Tensor, qkv: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """qkv (T, 3 * nh * hd): c_attn's output (the block runs it fused with ln_1)."""
        q, k, v = qkv.chunk(3, dim=-1)
        if self.logn_seq_length is not None:
            # A per-token scalar commutes with the rope, so scaling before the attention layer rotates is the same.
            q = q * logn_scale(positions, self.logn_seq_length).to(q.dtype)[:, None]
        return self.c_proj(self.attn(q, k, v, ctx, rope=self.rotary_emb, positions=positions))


class QWenMLP(GatedMLP):
    """c_proj(w1(x) * silu(w2(x))): w2 is the gate (shard 0 of gate_up_proj), w1 the up projection (shard 1)."""

    def __init__(self, config):
        # intermediate_size counts both halves (22016 in Qwen-7B: two 11008-wide projections).
        super().__init__(config.hidden_size, config.intermediate_size // 2, "silu", bias=_linear_bias(config))


class QWenBlock(nn.Module):
    def __init__(self, config, layer_idx: int, max_position: int):
        super().__init__()
        eps = float(_get(config, "layer_norm_epsilon", 1e-6))
        self.ln_1 = RMSNorm(config.hidden_size, eps=eps)
        self.attn = QWenAttention(config, layer_idx, max_position)
        self.ln_2 = RMSNorm(config.hidden_size, eps=eps)
        self.mlp = QWenMLP(config)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None, ctx: ForwardContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Each norm runs inside the projection after it (one kernel per pair for decode rows).
        qkv, residual = norm_then_linear(self.ln_1, self.attn.c_attn, hidden_states, residual)
        hidden_states = self.attn(positions, qkv, ctx)
        gate_up, residual = norm_then_linear(self.ln_2, self.mlp.gate_up_proj, hidden_states, residual)
        return self.mlp.down(gate_up), residual


class QWenModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        positions = int(_get(config, "max_position_embeddings", 8192))
        self.wte = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList([QWenBlock(config, i, positions) for i in range(config.num_hidden_layers)])
        self.ln_f = RMSNorm(config.hidden_size, eps=float(_get(config, "layer_norm_epsilon", 1e-6)))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = self.wte(input_ids)  # (T, H)
        residual = None
        for block in self.h:
            hidden_states, residual = block(positions, hidden_states, residual, ctx)
        hidden_states, _ = self.ln_f(hidden_states, residual)
        return hidden_states


class QWenLMHeadModel(CausalLM):
    backbone_cls = QWenModel
    backbone_name = "transformer"
    input_embedding_name = "wte"
    weights_mapper = WeightsMapper(
        renamed_suffixes={"mlp.c_proj.weight": "mlp.down_proj.weight", "mlp.c_proj.bias": "mlp.down_proj.bias"},
        packed={"w2": ("gate_up_proj", 0), "w1": ("gate_up_proj", 1)},
    )

    def max_prompt_len(self) -> int | None:
        return qwen_prompt_limit(self.config.to_dict())
