"""Inference-only OLMo 2 (AllenAI): the Llama decoder with q/k norms over the full projections and post-norms."""

from __future__ import annotations

from llmctl.model_defs.llama import LlamaForCausalLM, LlamaVariant

__all__ = ["Olmo2ForCausalLM"]


class Olmo2ForCausalLM(LlamaForCausalLM):
    """Llama's projections and SwiGLU MLP, but q_norm / k_norm are RMSNorms over all of q (heads * head_dim) and
    all of k (kv_heads * head_dim) before rope, and each layer has no pre-norm: post_attention_layernorm and
    post_feedforward_layernorm norm the sublayer outputs before they join the residual stream."""

    variant = LlamaVariant(qk_norm="full", post_norms=True)
