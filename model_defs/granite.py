"""Inference-only IBM Granite (3.x dense): the Llama decoder with four scalar multipliers from its config."""

from __future__ import annotations

from llmctl.model_defs.llama import LlamaForCausalLM, LlamaVariant

__all__ = ["GraniteForCausalLM"]


class GraniteForCausalLM(LlamaForCausalLM):
    """Llama with embedding_multiplier on the embeddings, residual_multiplier on each sublayer's output before the
    residual add, attention_multiplier as the score scale (not head_dim ** -0.5) and logits divided by
    logits_scaling (every Granite 3.x config sets all four). Checkpoint names are Llama's."""

    variant = LlamaVariant(multipliers=True)
