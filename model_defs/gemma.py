"""Inference-only Gemma, Gemma 2 and Gemma 3 (text) models compatible with HF weights."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from llmctl.core.errors import UnsupportedModelError
from llmctl.model_defs.base import CausalLM, head_dim_of, num_kv_heads_of
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.gemma_norm import GemmaRMSNorm
from llmctl.model_defs.layers.linear import Linear, QKVLinear
from llmctl.model_defs.layers.mlp import GatedMLP
from llmctl.model_defs.layers.rotary import get_rope_from_config
from llmctl.model_defs.weights_mapper import QKV_GATE_UP_PACKED, WeightsMapper

FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class GemmaVariant:
    """What distinguishes the generations beyond their config.json (set per class, never from the name)."""

    act_key: str = "hidden_act"  # Gemma 1 reads hidden_act; Gemma 2/3 read hidden_activation
    sliding_pattern: int = 0  # every n-th layer is global when config.layer_types is absent; 0: no sliding
    sandwich_norms: bool = False  # Gemma 2/3: post-attention, pre- and post-feed-forward norms
    query_pre_attn_scalar: bool = False  # Gemma 2/3: scores scaled by query_pre_attn_scalar ** -0.5
    attn_softcap: bool = False  # Gemma 2: tanh soft-capping of attention scores (attn_logit_softcapping)
    final_softcap: bool = False  # Gemma 2/3: tanh soft-capping of the logits (final_logit_softcapping)
    qk_norm: bool = False  # Gemma 3: RMSNorm over each head of q and k before rope
    rope_per_layer_type: bool = False  # Gemma 3: local / global rope from rope_parameters[layer_type]


def layer_types_of(config, variant: GemmaVariant) -> list[str]:
    """"sliding_attention" / "full_attention" per layer: config.layer_types, else the generation's pattern."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return list(layer_types)
    n = config.num_hidden_layers
    if not variant.sliding_pattern:
        return [FULL] * n
    # Hub configs before transformers 5 give the pattern: Gemma 2 alternates (sliding first), Gemma 3 stores
    # sliding_window_pattern (6: five local layers, then one global).
    pattern = getattr(config, "sliding_window_pattern", None) or variant.sliding_pattern
    return [SLIDING if (i + 1) % pattern else FULL for i in range(n)]


def _activation(config, variant: GemmaVariant) -> str:
    act = getattr(config, variant.act_key, None) or getattr(config, "hidden_act", None) or "gelu_pytorch_tanh"
    if variant.act_key == "hidden_act" and act == "gelu":
        # Official Gemma 1 configs (google/gemma-2b, gemma-7b) say "gelu" but were trained with the tanh
        # approximation; transformers' GemmaConfig rewrites it the same way.
        act = "gelu_pytorch_tanh"
    return act


@functools.lru_cache(maxsize=None)
def _embed_normalizer(hidden_size: int, dtype: torch.dtype) -> float:
    # transformers multiplies by sqrt(hidden) rounded to the weight dtype (55.4256 becomes 55.5 in bf16).
    return torch.tensor(hidden_size**0.5, dtype=torch.float32).to(dtype).item()


class GemmaAttention(nn.Module):
    def __init__(self, config, layer_idx: int, layer_type: str, variant: GemmaVariant):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = num_kv_heads_of(config)
        self.head_dim = head_dim_of(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = getattr(config, "attention_bias", False)

        self.qkv_proj = QKVLinear(config.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=bias)
        self.qk_norm = variant.qk_norm
        if variant.qk_norm:
            self.q_norm = GemmaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = GemmaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.rotary_emb = get_rope_from_config(
            config, self.head_dim, is_neox_style=True, layer_type=layer_type if variant.rope_per_layer_type else None
        )
        scalar = getattr(config, "query_pre_attn_scalar", None) if variant.query_pre_attn_scalar else None
        # Gemma 3's transformers attention never passes attn_logit_softcapping on (null in its hub configs).
        softcap = getattr(config, "attn_logit_softcapping", None) if variant.attn_softcap else None
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            (scalar or self.head_dim) ** -0.5,
            self.num_kv_heads,
            layer_idx,
            sliding_window=config.sliding_window if layer_type == SLIDING else None,
            logit_softcap=softcap,
        )

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        qkv = self.qkv_proj(hidden_states)  # (T, (nh + 2 nkv) * hd)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm:
            q = self.q_norm(q.reshape(-1, self.num_heads, self.head_dim)).reshape(-1, self.q_size)
            k = self.k_norm(k.reshape(-1, self.num_kv_heads, self.head_dim)).reshape(-1, self.kv_size)
        # The attention layer applies the rope: with a KV cache it rotates q/k and writes k/v in one kernel.
        return self.o_proj(self.attn(q, k, v, ctx, rope=self.rotary_emb, positions=positions))


class GemmaMLP(GatedMLP):
    def __init__(self, config, variant: GemmaVariant):
        super().__init__(config.hidden_size, config.intermediate_size, _activation(config, variant))


class GemmaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, layer_type: str, variant: GemmaVariant):
        super().__init__()
        eps = config.rms_norm_eps
        self.self_attn = GemmaAttention(config, layer_idx, layer_type, variant)
        self.mlp = GemmaMLP(config, variant)
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, eps=eps)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, eps=eps)
        self.sandwich_norms = variant.sandwich_norms
        if variant.sandwich_norms:
            self.pre_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps=eps)
            self.post_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps=eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, ctx)
        if not self.sandwich_norms:  # Gemma 1: the Llama layout
            hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
            return self.mlp(hidden_states), residual
        # Gemma 2/3: each sublayer's output is normed before it joins the residual stream.
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states, residual = self.pre_feedforward_layernorm(hidden_states, residual)
        hidden_states = self.post_feedforward_layernorm(self.mlp(hidden_states))
        return hidden_states, residual


class GemmaModel(nn.Module):
    def __init__(self, config, variant: GemmaVariant):
        super().__init__()
        if getattr(config, "use_bidirectional_attention", False):
            raise UnsupportedModelError(
                "Gemma with use_bidirectional_attention (EmbeddingGemma-style) is not supported by llmctl's "
                "causal model",
                hint="try model_impl='transformers'",
            )
        layer_types = layer_types_of(config, variant)
        self.hidden_size = config.hidden_size
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [GemmaDecoderLayer(config, i, layer_types[i], variant) for i in range(config.num_hidden_layers)]
        )
        self.norm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)  # (T, H)
        hidden_states = hidden_states * _embed_normalizer(self.hidden_size, hidden_states.dtype)
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual, ctx)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class GemmaForCausalLM(CausalLM):
    backbone_cls = GemmaModel
    variant = GemmaVariant()
    weights_mapper = WeightsMapper(packed=QKV_GATE_UP_PACKED)
    tie_word_embeddings_default = True  # every released Gemma ties its head to the embedding

    def __init__(self, config):
        super().__init__(config)
        cap = getattr(config, "final_logit_softcapping", None) if self.variant.final_softcap else None
        self.final_logit_softcapping = cap

    def build_backbone(self, config) -> GemmaModel:
        return GemmaModel(config, self.variant)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden_states)  # (N, V)
        if self.final_logit_softcapping is not None:
            logits = torch.tanh(logits / self.final_logit_softcapping) * self.final_logit_softcapping
        return logits


class Gemma2ForCausalLM(GemmaForCausalLM):
    # Alternating local (sliding) / global layers, sandwich norms, attention and final logit soft-capping.
    variant = GemmaVariant(
        act_key="hidden_activation",
        sliding_pattern=2,
        sandwich_norms=True,
        query_pre_attn_scalar=True,
        attn_softcap=True,
        final_softcap=True,
    )


class Gemma3ForCausalLM(GemmaForCausalLM):
    # Gemma 2's layout plus q/k norms and a rope per layer type (local rope_local_base_freq, global rope_theta).
    variant = GemmaVariant(
        act_key="hidden_activation",
        sliding_pattern=6,
        sandwich_norms=True,
        query_pre_attn_scalar=True,
        final_softcap=True,
        qk_norm=True,
        rope_per_layer_type=True,
    )
