"""Decoder embedding backbones (e5-mistral's MistralModel, LlamaModel, Qwen3Model): the Llama stack without a head."""

from __future__ import annotations

import dataclasses

from llmctl.model_defs import llama
from llmctl.model_defs.base import EmbeddingModel


class _DecoderEmbedModel(llama.LlamaModel, EmbeddingModel):
    """model(input_ids (T,), positions (T,), ctx) -> final-norm hidden states (T, H), causal attention.

    The checkpoint keys are the backbone's own (embed_tokens, layers.N..., norm); a checkpoint saved from
    the *ForCausalLM class carries a "model." prefix, which the weights mapper strips, and an lm_head it ignores.
    """

    is_causal = True
    variant = llama.LlamaVariant()
    weights_mapper = dataclasses.replace(
        llama.LlamaForCausalLM.weights_mapper, strip_prefixes=("model.",), ignored_prefixes=("lm_head.",)
    )

    def __init__(self, config):
        super().__init__(config, self.variant)
        self.config = config


class LlamaModel(_DecoderEmbedModel):
    variant = llama.LlamaForCausalLM.variant


class MistralModel(_DecoderEmbedModel):
    # Every layer uses config.sliding_window (e5-mistral-7b-instruct: 4096).
    variant = llama.MistralForCausalLM.variant


class Qwen3Model(_DecoderEmbedModel):
    # Qwen3-Embedding: per-head q/k RMSNorm.
    variant = llama.Qwen3ForCausalLM.variant
