"""Inference-only Phi-3 / Phi-3.5 / Phi-4 (Llama layout, fused qkv and gate_up in the checkpoint, longrope)."""

from __future__ import annotations

from llmctl.model_defs.llama import LlamaForCausalLM, LlamaVariant
from llmctl.model_defs.weights_mapper import WeightsMapper


class Phi3ForCausalLM(LlamaForCausalLM):
    """A Llama decoder whose checkpoint already stores qkv_proj (q | k | v rows) and gate_up_proj (gate | up rows).

    Those are exactly the layouts of LlamaAttention.qkv_proj and GatedMLP.gate_up_proj, so the loader copies
    them whole: no packed mapping. Rope (longrope with short/long factors, partial_rotary_factor) comes from
    the config through rotary.py; config.sliding_window (Phi-3-mini-4k: 2047) applies to every layer, as in
    transformers.
    """

    variant = LlamaVariant(sliding_window="all")
    weights_mapper = WeightsMapper()
