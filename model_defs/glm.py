"""Inference-only GLM / GLM-4 (transformers' Glm, Glm4) and ChatGLM2 / ChatGLM3 / GLM-4 (remote-code hub repos)."""

from __future__ import annotations

import copy

from llmctl.core.errors import UnsupportedModelError
from llmctl.model_defs.llama import LlamaForCausalLM, LlamaVariant
from llmctl.model_defs.weights_mapper import QKV_PACKED, WeightsMapper

__all__ = ["ChatGLMForConditionalGeneration", "ChatGLMModel", "Glm4ForCausalLM", "GlmForCausalLM"]

# Both rotate the first half of each head (partial_rotary_factor 0.5) in (even, odd) pairs; q/k/v carry a bias
# when config says so, the output projection never does.
_GLM = LlamaVariant(o_bias=False, rope_interleaved=True)


class GlmForCausalLM(LlamaForCausalLM):
    """THUDM/glm-4-9b-*-hf: the Llama decoder with interleaved partial rope, q/k/v bias (attention_bias) and the
    checkpoint's mlp.gate_up_proj already fused (gate, then up: GatedMLP's order)."""

    variant = _GLM
    weights_mapper = WeightsMapper(packed=QKV_PACKED)


class Glm4ForCausalLM(GlmForCausalLM):
    """THUDM/GLM-4-9B-0414, GLM-4-32B-0414: GLM with post_self_attn_layernorm / post_mlp_layernorm on each
    sublayer's output before it joins the residual stream."""

    variant = LlamaVariant(o_bias=False, rope_interleaved=True, sandwich_norms=True)


# The remote ChatGLMConfig's defaults (configuration_chatglm.py), for config.json files that leave a key out.
_CHATGLM_DEFAULTS = dict(num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696,
                         kv_channels=128, num_attention_heads=32, seq_length=2048, layernorm_epsilon=1e-5,
                         rmsnorm=True, apply_residual_connection_post_layernorm=False, post_layer_norm=True,
                         add_bias_linear=False, add_qkv_bias=False, multi_query_attention=False,
                         multi_query_group_num=1, rope_ratio=1.0)  # fmt: skip


def llama_config_of_chatglm(config):
    """A copy of a ChatGLM config with the names the Llama layers read (GLM's, with its half-head rope)."""

    def get(key):
        value = getattr(config, key, None)
        return _CHATGLM_DEFAULTS[key] if value is None else value

    # Variants the released checkpoints never use: refused rather than run as another function.
    for key, wanted in (("rmsnorm", True), ("post_layer_norm", True), ("add_bias_linear", False),
                        ("apply_residual_connection_post_layernorm", False)):  # fmt: skip
        if bool(get(key)) != wanted:
            raise UnsupportedModelError(f"ChatGLM with {key}={get(key)!r} is not supported natively")
    heads = int(get("num_attention_heads"))
    rope = dict(rope_type="default", rope_theta=10000.0 * float(get("rope_ratio")), partial_rotary_factor=0.5)
    out = copy.copy(config)
    out.vocab_size, out.hidden_size = int(get("padded_vocab_size")), int(get("hidden_size"))
    out.num_hidden_layers, out.num_attention_heads = int(get("num_layers")), heads
    out.num_key_value_heads = int(get("multi_query_group_num")) if get("multi_query_attention") else heads
    out.head_dim, out.intermediate_size = int(get("kv_channels")), int(get("ffn_hidden_size"))
    out.rms_norm_eps, out.hidden_act = float(get("layernorm_epsilon")), "silu"  # swiglu: silu(gate) * up
    out.attention_bias = bool(get("add_qkv_bias"))
    out.max_position_embeddings = int(get("seq_length"))
    out.rope_theta, out.rope_parameters = rope["rope_theta"], rope
    out.tie_word_embeddings = False  # output_layer is its own tensor in every ChatGLM checkpoint
    return out


def _chatglm_names() -> tuple[dict[str, str], dict[str, str]]:
    """modeling_chatglm.py's tensor names -> GLM's: (prefix renames, suffix renames)."""
    prefixes = {
        "transformer.embedding.word_embeddings.": "model.embed_tokens.",
        "transformer.encoder.layers.": "model.layers.",
        "transformer.encoder.final_layernorm.": "model.norm.",
        "transformer.output_layer.": "lm_head.",
    }
    names = {
        ".self_attention.query_key_value.": ".self_attn.qkv_proj.",  # q | k | v rows, as QKVLinear holds them
        ".self_attention.dense.": ".self_attn.o_proj.",
        ".mlp.dense_h_to_4h.": ".mlp.gate_up_proj.",  # swiglu's chunk(2): gate, then up
        ".mlp.dense_4h_to_h.": ".mlp.down_proj.",
    }
    return prefixes, {f"{old}{p}": f"{new}{p}" for old, new in names.items() for p in ("weight", "bias")}


class ChatGLMForConditionalGeneration(LlamaForCausalLM):
    """THUDM/chatglm2-6b, chatglm3-6b, glm-4-9b(-chat): GLM's function under transformer.embedding / encoder /
    output_layer names, with query_key_value over multi_query_group_num kv heads (add_qkv_bias), the rope base
    10000 * rope_ratio (GLM-4) and padded_vocab_size rows; the config is the repo's ChatGLMConfig, read here."""

    variant = _GLM
    weights_mapper = WeightsMapper(
        renamed_prefixes=_chatglm_names()[0],
        renamed_suffixes=_chatglm_names()[1],
        ignored_suffixes=("rotary_pos_emb.inv_freq",),  # a buffer the checkpoints saved
    )

    def __init__(self, config):
        super().__init__(llama_config_of_chatglm(config))


class ChatGLMModel(ChatGLMForConditionalGeneration):
    """The architecture chatglm2-6b / chatglm3-6b / glm-4-9b name in config.json: the same model, output_layer
    included (their auto_map builds ChatGLMForConditionalGeneration for causal LM)."""
