"""Inference-only InternLM (v1) and InternLM2: Llama decoders whose hub checkpoints ship remote code, run natively."""

from __future__ import annotations

import copy

from llmctl.core.errors import UnsupportedModelError
from llmctl.model_defs.llama import LlamaForCausalLM, LlamaModel, LlamaVariant
from llmctl.model_defs.weights_mapper import QKV_GATE_UP_PACKED, WeightsMapper

__all__ = ["InternLM2ForCausalLM", "InternLMForCausalLM"]


# The repo's InternLMConfig default: dynamic NTK (scaling_factor 1.0: plain rope within max_position_embeddings).
_ROTARY_DEFAULT = {"base": 10000, "type": "dynamic"}


def rope_config_of_rotary(config):
    """InternLM's `rotary` dict ({"base", "type": "origin" | "dynamic", "scaling_factor"}) as rope_theta /
    rope_scaling on a copy of config, which the Llama layers read; a config with rope_scaling keeps its own."""
    if getattr(config, "rope_scaling", None):
        return config
    rotary = getattr(config, "rotary", None) or _ROTARY_DEFAULT
    if rotary.get("type", "dynamic") not in ("origin", "dynamic"):
        raise UnsupportedModelError(f"InternLM rotary type {rotary.get('type')!r} is not 'origin' or 'dynamic'")
    params = {"rope_type": "default", "rope_theta": float(rotary.get("base", 10000))}
    if rotary.get("type", "dynamic") == "dynamic":  # modeling_internlm.py's InternLMDynamicNTKScalingRotaryEmbedding
        params.update(rope_type="dynamic", factor=float(rotary.get("scaling_factor", 1.0)))
    config = copy.copy(config)
    config.rope_theta, config.rope_scaling, config.rope_parameters = params["rope_theta"], dict(params), dict(params)
    return config


class InternLMForCausalLM(LlamaForCausalLM):
    """internlm/internlm-7b: Llama's names and layout, with a bias on q/k/v and o when config.bias (true unless
    config.json says otherwise, as the repo's InternLMConfig defaults), and its rope from config.rotary."""

    variant = LlamaVariant(bias_key="bias")

    def build_backbone(self, config) -> LlamaModel:
        return LlamaModel(rope_config_of_rotary(config), self.variant)


def _internlm2_names() -> dict[str, str]:
    """InternLM2's tensor names (modeling_internlm2.py) -> Llama's, before Llama's packing applies."""
    names = {
        ".attention.wqkv.": ".self_attn.qkv_proj.",  # fused already, in the grouped layout KVGroupedQKVLinear reads
        ".attention.wo.": ".self_attn.o_proj.",
        ".feed_forward.w1.": ".mlp.gate_proj.",
        ".feed_forward.w3.": ".mlp.up_proj.",
        ".feed_forward.w2.": ".mlp.down_proj.",
        ".attention_norm.": ".input_layernorm.",
        ".ffn_norm.": ".post_attention_layernorm.",
    }
    renamed = {f"{old}{p}": f"{new}{p}" for old, new in names.items() for p in ("weight", "bias")}
    return {**renamed, "model.tok_embeddings.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight"}


class InternLM2ForCausalLM(LlamaForCausalLM):
    """internlm/internlm2-*: the Llama decoder under other names (tok_embeddings, attention.wqkv / wo,
    feed_forward.w1 / w3 / w2, attention_norm, ffn_norm, output) with wqkv stored per kv group; config.bias
    puts a bias on wqkv and wo (the hub configs say false; the repo's InternLM2Config defaults to true)."""

    variant = LlamaVariant(bias_key="bias", kv_grouped_qkv=True)
    weights_mapper = WeightsMapper(renamed_suffixes=_internlm2_names(), packed=QKV_GATE_UP_PACKED)
