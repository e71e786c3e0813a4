"""Inference-only Llama-family models (Llama 2/3, Yi, SmolLM2, Mistral, Qwen2/3, OLMo 2, Granite, InternLM,
Baichuan, GLM)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmctl.model_defs.base import CausalLM, head_dim_of, num_kv_heads_of
from llmctl.model_defs.layers.alibi import bloom_alibi_slopes
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.layout_linear import KVGroupedQKVLinear
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
    qk_norm: str = "none"  # RMSNorm of q and k before rope: "head" (Qwen3) over each head, "full" (OLMo 2) over all
    sliding_window: str = "none"  # "none" | "all" (Mistral: config.sliding_window) | "layer_types" (Qwen2/3)
    post_norms: bool = False  # OLMo 2: no pre-norms; each sublayer's output is normed before it joins the residual
    multipliers: bool = False  # Granite: embedding_, residual_, attention_multiplier and logits_scaling from config
    bias_key: str = "attention_bias"  # the config key of the q/k/v/o bias flag: InternLM / InternLM2 call it "bias"
    kv_grouped_qkv: bool = False  # InternLM2's wqkv: per kv group its q heads, then k, then v (not q|k|v)
    alibi: bool = False  # Baichuan-13B / Baichuan2-13B: ALiBi biases (BLOOM's slopes) instead of a rope
    rope_interleaved: bool = False  # GLM / ChatGLM rotate (even, odd) pairs (GPT-J style), not the two halves
    sandwich_norms: bool = False  # GLM-4 (Glm4): each sublayer's output is normed too, before the residual add


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
        attention_bias = getattr(config, variant.bias_key, False)
        qkv_bias = attention_bias if variant.qkv_bias is None else variant.qkv_bias
        o_bias = attention_bias if variant.o_bias is None else variant.o_bias

        qkv_cls = KVGroupedQKVLinear if variant.kv_grouped_qkv else QKVLinear
        self.qkv_proj = qkv_cls(config.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, qkv_bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=o_bias)
        self.qk_norm = variant.qk_norm
        if variant.qk_norm != "none":
            full = variant.qk_norm == "full"
            self.q_norm = RMSNorm(self.q_size if full else self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.kv_size if full else self.head_dim, eps=config.rms_norm_eps)
        self.rotary_emb = None if variant.alibi else get_rope_from_config(
            config, self.head_dim, is_neox_style=not variant.rope_interleaved)
        # Granite scales the scores by config.attention_multiplier instead of head_dim ** -0.5.
        scale = config.attention_multiplier if variant.multipliers else self.head_dim**-0.5
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            scale,
            self.num_kv_heads,
            layer_idx,
            sliding_window=_sliding_window(config, layer_idx, variant),
            alibi_slopes=bloom_alibi_slopes(self.num_heads) if variant.alibi else None,
        )

    def forward(self, positions: torch.Tensor, qkv: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """qkv (T, (nh + 2 nkv) * hd): qkv_proj's output (the decoder layer runs it fused with its norm)."""
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        elif self.qk_norm == "head":
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
        self.post_norms = variant.post_norms
        if variant.post_norms:
            self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        else:
            self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.residual_multiplier = config.residual_multiplier if variant.multipliers else None
        self.sandwich_norms = variant.sandwich_norms
        if variant.sandwich_norms:
            self.post_self_attn_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.post_mlp_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.post_norms:
            return self._forward_post_norms(positions, hidden_states, residual, ctx)
        # Each norm runs inside the projection after it (one kernel per pair for decode rows).
        qkv, residual = norm_then_linear(self.input_layernorm, self.self_attn.qkv_proj, hidden_states, residual)
        hidden_states = self.self_attn(positions, qkv, ctx)
        if self.residual_multiplier is not None:  # Granite: residual + sublayer * residual_multiplier
            hidden_states = hidden_states * self.residual_multiplier
        if self.sandwich_norms:
            hidden_states = self.post_self_attn_layernorm(hidden_states)
        gate_up, residual = norm_then_linear(
            self.post_attention_layernorm, self.mlp.gate_up_proj, hidden_states, residual
        )
        hidden_states = self.mlp.down(gate_up)
        if self.sandwich_norms:  # joins the residual inside the next layer's (or the final) norm
            hidden_states = self.post_mlp_layernorm(hidden_states)
        if self.residual_multiplier is not None:
            hidden_states = hidden_states * self.residual_multiplier
        return hidden_states, residual

    def _forward_post_norms(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """OLMo 2: stream + norm(attn(stream)), then + norm(mlp(stream)); returns (normed MLP output, stream)."""
        stream = hidden_states if residual is None else hidden_states + residual  # (T, H)
        attn_out = self.self_attn(positions, self.self_attn.qkv_proj(stream), ctx)
        stream = stream + self.post_attention_layernorm(attn_out)
        return self.post_feedforward_layernorm(self.mlp(stream)), stream


class LlamaModel(nn.Module):
    def __init__(self, config, variant: LlamaVariant):
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, i, variant) for i in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.embedding_multiplier = config.embedding_multiplier if variant.multipliers else None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)  # (T, H)
        if self.embedding_multiplier is not None:
            hidden_states = hidden_states * self.embedding_multiplier
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

    def __init__(self, config):
        super().__init__(config)
        self.logits_scaling = config.logits_scaling if self.variant.multipliers else None  # Granite

    def build_backbone(self, config) -> LlamaModel:
        return LlamaModel(config, self.variant)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = super().compute_logits(hidden_states)  # (N, V)
        if self.logits_scaling is not None:  # Granite divides the logits
            logits = logits / self.logits_scaling
        return logits


class MistralForCausalLM(LlamaForCausalLM):
    # Every layer uses config.sliding_window (None in Mistral v0.2+ configs means full attention).
    variant = LlamaVariant(sliding_window="all")


class Qwen2ForCausalLM(LlamaForCausalLM):
    # q/k/v carry a bias, o_proj none; sliding layers come from config.layer_types (use_sliding_window).
    variant = LlamaVariant(qkv_bias=True, o_bias=False, sliding_window="layer_types")


class Qwen3ForCausalLM(LlamaForCausalLM):
    # Per-head RMSNorm on q and k before rope; biases follow config.attention_bias.
    variant = LlamaVariant(qk_norm="head", sliding_window="layer_types")
