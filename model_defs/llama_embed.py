"""Decoder embedding backbones (e5-mistral's MistralModel, LlamaModel, Qwen3Model): the Llama stack without a head."""

from __future__ import annotations

from llmctl.model_defs import llama
from llmctl.model_defs.llama import LlamaVariant


class _DecoderEmbedModel(llama.LlamaModel):
    """model(input_ids (T,), positions (T,), ctx) -> final-norm hidden states (T, H), causal attention.

    The checkpoint keys are the backbone's own (embed_tokens, layers.N..., norm); a checkpoint saved from
    the *ForCausalLM class carries a "model." prefix, which the embedder strips, and an lm_head it ignores.
    """

    is_causal = True
    variant = LlamaVariant()
    packed_modules_mapping = llama.LlamaForCausalLM.packed_modules_mapping
    checkpoint_prefixes = ("model.",)
    ignored_checkpoint_prefixes = ("lm_head.",)
    checkpoint_renames: dict[str, str] = {}

    def __init__(self, config):
        super().__init__(config, self.variant)
        self.config = config

    @classmethod
    def max_positions(cls, config) -> int:
        return config.max_position_embeddings


class LlamaModel(_DecoderEmbedModel):
    variant = llama.LlamaForCausalLM.variant


class MistralModel(_DecoderEmbedModel):
    # Every layer uses config.sliding_window (e5-mistral-7b-instruct: 4096).
    variant = llama.MistralForCausalLM.variant


class Qwen3Model(_DecoderEmbedModel):
    # Qwen3-Embedding: per-head q/k RMSNorm.
    variant = llama.Qwen3ForCausalLM.variant
