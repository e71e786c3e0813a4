"""Inference-only Llama-family models (Llama 2/3, Yi, SmolLM2, Mistral, Qwen2, Qwen3) compatible with HF weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmctl.model_defs.base import CausalLM, head_dim_of, num_kv_heads_of
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.linear import Linear, QKVLinear
from llmctl.model_defs.layers.mlp import GatedMLP
from llmctl.model_defs.layers.norm import RMSNorm, norm_then_linear
from llmctl.model_defs.layers.rotary import get_rope_from_config
from llmctl.model_defs.weights_mapper import QKV_GATE_UP_PACKED, WeightsMapper


@dataclass(frozen=True)
class LlamaVariant:
    """What distinguishes the family members beyond their config.json (set per class, never from the name)."""

    qkv_bias: bool | None = None  # None: config.attention_bias (Llama); Qwen2 always has q/k/v bias
    o_bias: bool | None = None  # None: config.attention_bias; Qwen2 has none
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k before rope
    sliding_window: str = "none"  # "none" | "all" (Mistral: config.sliding_window) | "layer_types" (Qwen2/3)


def _sliding_window(config, layer_idx: int, variant: LlamaVariant) -> int | None:
    window = getattr(config, "sliding_window", None)
    if variant.sliding_window == "all":
        return window
    if variant.sliding_window == "layer_types":
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None and layer_types[layer_idx] == "sliding_attention":
            return window
    return None


class LlamaAttention(nn.Module):
    def __init__(self, config, layer_idx: int, variant: LlamaVariant):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = num_kv_heads_of(config)
        self.head_dim = head_dim_of(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        attention_bias = getattr(config, "attention_bias", False)
        qkv_bias = attention_bias if variant.qkv_bias is None else variant.qkv_bias
        o_bias = attention_bias if variant.o_bias is None else variant.o_bias

        self.qkv_proj = QKVLinear(config.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, qkv_bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=o_bias)
        if variant.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.qk_norm = variant.qk_norm
        self.rotary_emb = get_rope_from_config(config, self.head_dim, is_neox_style=True)
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            self.head_dim**-0.5,
            self.num_kv_heads,
            layer_idx,
            sliding_window=_sliding_window(config, layer_idx, variant),
        )

    def forward(self, positions: torch.Tensor, qkv: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """qkv (T, (nh + 2 nkv) * hd): qkv_proj's output (the decoder layer runs it fused with its norm)."""
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm:
            q = self.q_norm(q.reshape(-1, self.num_heads, self.head_dim)).reshape(-1, self.q_size)
            k = self.k_norm(k.reshape(-1, self.num_kv_heads, self.head_dim)).reshape(-1, self.kv_size)
        # The attention layer applies the rope: with a KV cache it rotates q/k and writes k/v in one kernel.
        return self.o_proj(self.attn(q, k, v, ctx, rope=self.rotary_emb, positions=positions))


class LlamaMLP(GatedMLP):
    def __init__(self, config):
        super().__init__(
            config.hidden_size, config.intermediate_size, config.hidden_act, bias=getattr(config, "mlp_bias", False)
        )


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, variant: LlamaVariant):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx, variant)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Each norm runs inside the projection after it (one kernel per pair for decode rows).
        qkv, residual = norm_then_linear(self.input_layernorm, self.self_attn.qkv_proj, hidden_states, residual)
        hidden_states = self.self_attn(positions, qkv, ctx)
        gate_up, residual = norm_then_linear(
            self.post_attention_layernorm, self.mlp.gate_up_proj, hidden_states, residual
        )
        return self.mlp.down(gate_up), residual


class LlamaModel(nn.Module):
    def __init__(self, config, variant: LlamaVariant):
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, i, variant) for i in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)  # (T, H)
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual, ctx)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(CausalLM):
    """Llama 2/3, Yi, SmolLM2: the base contract with a fused q/k/v and gate/up; members differ by their variant."""

    backbone_cls = LlamaModel
    variant = LlamaVariant()
    weights_mapper = WeightsMapper(packed=QKV_GATE_UP_PACKED)

    def build_backbone(self, config) -> LlamaModel:
        return LlamaModel(config, self.variant)


class MistralForCausalLM(LlamaForCausalLM):
    # Every layer uses config.sliding_window (None in Mistral v0.2+ configs means full attention).
    variant = LlamaVariant(sliding_window="all")


class Qwen2ForCausalLM(LlamaForCausalLM):
    # q/k/v carry a bias, o_proj none; sliding layers come from config.layer_types (use_sliding_window).
    variant = LlamaVariant(qkv_bias=True, o_bias=False, sliding_window="layer_types")


class Qwen3ForCausalLM(LlamaForCausalLM):
    # Per-head RMSNorm on q and k before rope; biases follow config.attention_bias.
    variant = LlamaVariant(qk_norm=True, sliding_window="layer_types")
