"""How each family spells its config keys, and transformers' defaults for the keys hub files leave out."""

from __future__ import annotations

from typing import Any

from llmctl.core.errors import ModelReadError

# transformers' defaults (configuration_<family>.py) for the structural keys; hub config.json files often omit
# them (llava-1.5's text_config gives only vocab_size and a few more and relies on LlamaConfig()).
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048, tie_word_embeddings=False,
                  rope_theta=10000.0, attention_bias=False, mlp_bias=False),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", max_position_embeddings=131072,
                    tie_word_embeddings=False, rope_theta=10000.0, sliding_window=4096),
    "mixtral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", max_position_embeddings=131072,
                    tie_word_embeddings=False, rope_theta=1e6, num_local_experts=8, num_experts_per_tok=2),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, hidden_act="silu", max_position_embeddings=32768, tie_word_embeddings=False,
                  rope_theta=10000.0, use_sliding_window=False),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, head_dim=128, hidden_act="silu", max_position_embeddings=32768,
                  tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False, use_sliding_window=False),
    "qwen2_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                      num_attention_heads=16, hidden_act="silu", max_position_embeddings=32768,
                      tie_word_embeddings=False, rope_theta=10000.0, use_sliding_window=False, decoder_sparse_step=1,
                      moe_intermediate_size=1408, shared_expert_intermediate_size=5632, num_experts_per_tok=4,
                      num_experts=60, mlp_only_layers=[], qkv_bias=True),
    "qwen3_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                      num_attention_heads=32, num_key_value_heads=4, hidden_act="silu", tie_word_embeddings=False,
                      max_position_embeddings=32768, use_sliding_window=False, decoder_sparse_step=1,
                      moe_intermediate_size=768, num_experts_per_tok=8, num_experts=128, mlp_only_layers=[]),
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, head_dim=256, hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192,
                  tie_word_embeddings=True, rope_theta=10000.0),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                   max_position_embeddings=8192, tie_word_embeddings=True, rope_theta=10000.0, sliding_window=4096),
    "gemma3_text": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072,
                        tie_word_embeddings=True, rope_theta=1000000.0, sliding_window=4096),
    "deepseek_v2": dict(vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048,
                        tie_word_embeddings=False, first_k_dense_replace=0, kv_lora_rank=512, q_lora_rank=1536,
                        n_routed_experts=64, n_shared_experts=2, qk_nope_head_dim=128, qk_rope_head_dim=64,
                        v_head_dim=128, moe_intermediate_size=1407, moe_layer_freq=1),
    "deepseek_v3": dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                        num_hidden_layers=61, num_attention_heads=128, n_shared_experts=1, n_routed_experts=256,
                        kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
                        qk_nope_head_dim=128, num_experts_per_tok=8, first_k_dense_replace=3, hidden_act="silu",
                        max_position_embeddings=4096, tie_word_embeddings=False, moe_layer_freq=1),
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 activation_function="gelu_new", tie_word_embeddings=True),
    "gptj": dict(vocab_size=50400, n_positions=2048, n_embd=4096, n_layer=28, n_head=16, rotary_dim=64,
                 activation_function="gelu_new", tie_word_embeddings=False),
    "gpt_neox": dict(vocab_size=50432, hidden_size=6144, num_hidden_layers=44, num_attention_heads=64,
                     intermediate_size=24576, hidden_act="gelu", max_position_embeddings=2048, rotary_pct=0.25,
                     rotary_emb_base=10000, tie_word_embeddings=False, attention_bias=True),
    "opt": dict(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072, max_position_embeddings=2048,
                do_layer_norm_before=True, _remove_final_layer_norm=False, num_attention_heads=12,
                activation_function="relu", enable_bias=True, layer_norm_elementwise_affine=True,
                tie_word_embeddings=True),
    "bloom": dict(vocab_size=250880, hidden_size=64, n_layer=2, n_head=8, tie_word_embeddings=True,
                  activation_function="gelu"),
    "falcon": dict(vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                   alibi=False, new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False,
                   max_position_embeddings=2048, rope_theta=10000.0, activation="gelu", tie_word_embeddings=True),
    "mpt": dict(d_model=2048, n_heads=16, n_layers=24, expansion_ratio=4, max_seq_len=2048, vocab_size=50368,
                no_bias=True, learned_pos_emb=True, tie_word_embeddings=True, activation="gelu"),
    "phi": dict(vocab_size=51200, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                num_attention_heads=32, hidden_act="gelu_new", max_position_embeddings=2048, partial_rotary_factor=0.5,
                rope_theta=10000.0, qk_layernorm=False, tie_word_embeddings=False),
    "phi3": dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, hidden_act="silu", max_position_embeddings=4096, tie_word_embeddings=False,
                 rope_theta=10000.0),
    "starcoder2": dict(vocab_size=49152, hidden_size=3072, intermediate_size=12288, num_hidden_layers=30,
                       num_attention_heads=24, num_key_value_heads=2, hidden_act="gelu_pytorch_tanh",
                       max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=10000.0, use_bias=True),
    "olmo2": dict(vocab_size=50304, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048, tie_word_embeddings=False,
                  rope_theta=10000.0, attention_bias=False),
    "granite": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                    num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048, tie_word_embeddings=False,
                    rope_theta=10000.0, attention_bias=False, mlp_bias=False, embedding_multiplier=1.0,
                    residual_multiplier=1.0, attention_multiplier=1.0, logits_scaling=1.0),
    "bert": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
                 tie_word_embeddings=True),
    "bart": dict(vocab_size=50265, max_position_embeddings=1024, encoder_layers=12, encoder_ffn_dim=4096,
                 encoder_attention_heads=16, decoder_layers=12, decoder_ffn_dim=4096, decoder_attention_heads=16,
                 activation_function="gelu", d_model=1024, tie_word_embeddings=True),
    "t5": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
               relative_attention_num_buckets=32, feed_forward_proj="relu", tie_word_embeddings=True),
    "chatglm": dict(padded_vocab_size=65024, hidden_size=4096, num_layers=28, num_attention_heads=32,
                    kv_channels=128, ffn_hidden_size=13696, seq_length=2048, add_qkv_bias=False,
                    add_bias_linear=False, rmsnorm=True, post_layer_norm=True, tie_word_embeddings=False,
                    activation="swiglu"),
    # GlmConfig's (glm-4-9b sizes); partial_rotary_factor 0.5 is also read_rope's default for the family
    "glm": dict(vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=40,
                num_attention_heads=32, num_key_value_heads=2, head_dim=128, hidden_act="silu",
                max_position_embeddings=131072, rms_norm_eps=1.5625e-07, tie_word_embeddings=False,
                rope_theta=10000.0, attention_bias=True),
    # The remote QWenConfig's defaults (Qwen/Qwen-7B configuration_qwen.py); seq_length has none there.
    "qwen": dict(vocab_size=151936, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                 layer_norm_epsilon=1e-6, max_position_embeddings=8192, kv_channels=128, rotary_pct=1.0,
                 rotary_emb_base=10000, use_dynamic_ntk=True, use_logn_attn=True, intermediate_size=22016,
                 no_bias=True, tie_word_embeddings=False, hidden_act="silu"),
    # The repos' own InternLMConfig / InternLM2Config defaults (llmctl reads these configs without their code).
    "internlm": dict(bias=True, hidden_act="silu", tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0),
    "internlm2": dict(bias=True, hidden_act="silu", tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0),
    "baichuan": dict(hidden_act="silu", tie_word_embeddings=False),
    "deepseek": dict(hidden_act="silu", tie_word_embeddings=False, first_k_dense_replace=0, moe_layer_freq=1,
                     n_shared_experts=None),
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              num_channels=3, image_size=224, patch_size=32),
}
DEFAULTS["xlm-roberta"] = {**DEFAULTS["bert"], "max_position_embeddings": 514, "type_vocab_size": 1}
DEFAULTS["roberta"] = DEFAULTS["xlm-roberta"]
DEFAULTS["yi"] = DEFAULTS["llama"]
DEFAULTS["glm4"] = DEFAULTS["glm"]  # Glm4Config's defaults are GlmConfig's

# model_type (or trust_remote_code spelling) -> family name used across llmctl
_FAMILY_ALIASES = {
    "RefinedWeb": "falcon", "RefinedWebModel": "falcon", "xlm_roberta": "xlm-roberta", "mistral3": "mistral",
    "qwen2_vl_text": "qwen2", "internvl_chat": "internvl", "phi3_v": "phi3_v",
    "llava_llama": "llava", "deepseek_vl_v2": "deepseek_v2", "mpnet": "mpnet", "gpt_bigcode": "gpt_bigcode",
}
_ARCH_FAMILIES = {
    "BaichuanForCausalLM": "baichuan", "InternLMForCausalLM": "internlm", "InternLM2ForCausalLM": "internlm2",
    "ChatGLMModel": "chatglm", "ChatGLMForConditionalGeneration": "chatglm", "DeepseekForCausalLM": "deepseek",
    "RWForCausalLM": "falcon", "MPTForCausalLM": "mpt", "InternVLChatModel": "internvl",
    "Phi3VForCausalLM": "phi3_v", "LlavaLlamaForCausalLM": "llava", "YiForCausalLM": "llama",
    "QWenLMHeadModel": "qwen",
}

ENCODER_TYPES = {"bert", "xlm-roberta", "roberta", "mpnet", "distilbert", "nomic_bert", "electra", "deberta-v2"}
ENCODER_DECODER_TYPES = {"bart", "t5", "mbart", "mt5", "umt5", "pegasus", "marian"}

# Only where model_type names one class beyond doubt: the bare encoder, as sentence-transformers checkpoints use.
INFERABLE_ARCHITECTURES = {
    "bert": "BertModel", "xlm-roberta": "XLMRobertaModel", "roberta": "RobertaModel", "mpnet": "MPNetModel",
    "distilbert": "DistilBertModel", "electra": "ElectraModel", "mistral": "MistralModel", "llama": "LlamaModel",
    "qwen2": "Qwen2Model", "qwen3": "Qwen3Model", "gemma": "GemmaModel", "gemma2": "Gemma2Model",
}

_RMS_FAMILIES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2",
                 "gemma3_text", "deepseek", "deepseek_v2", "deepseek_v3", "phi3", "baichuan", "internlm", "internlm2", "t5",
                 "yi", "llava", "qwen2_vl", "internvl", "phi3_v", "olmo2", "granite", "qwen", "glm", "glm4", "chatglm"}
_LEARNED_POSITIONS = {"gpt2", "opt", "bert", "xlm-roberta", "roberta", "bart", "mpnet", "distilbert", "electra"}


def first(cfg: dict, *keys: str) -> Any:
    """The value of the first key present with a non-None value."""
    for key in keys:
        value = cfg.get(key)
        if value is not None:
            return value
    return None


# Keys that mean the same thing in different families: a default never overrides a spelling the file uses.
_SYNONYMS = (
    ("hidden_size", "n_embd", "d_model"),
    ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    ("num_attention_heads", "n_head", "n_heads", "num_heads"),
    ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num"),
    ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "d_ff"),
    ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"),
    ("vocab_size", "padded_vocab_size", "n_vocab"),
    ("rope_theta", "rope_parameters", "rotary_emb_base"),
    ("hidden_act", "activation_function", "hidden_activation", "activation"),
    ("num_local_experts", "n_routed_experts", "num_experts"),
)


class SizeReader:
    """Reads integer sizes from a config: a per-layer list of equal values reads as that value; one that varies
    reads as None, and `notes` says so (Gemma 3n's per-layer intermediate_size, Swin's per-stage num_heads)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.notes: list[str] = []
        self.varying: set[str] = set()

    def size(self, name: str, *keys: str) -> int | None:
        for key in keys or (name,):
            value = self.cfg.get(key)
            if value is None:
                continue
            if isinstance(value, dict):  # LXMERT: {"language": 9, "vision": 5, "cross_encoder": 5}
                self.notes.append(f"{key} is given per part ({_short(list(value.items()))}): not modelled, "
                                  "left unknown")
                self.varying.add(name)
                return None
            if isinstance(value, (list, tuple)):
                numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
                if value and len(numbers) == len(value) and len(set(numbers)) == 1:
                    value = numbers[0]
                else:
                    shown = sorted(set(numbers)) if numbers and len(numbers) == len(value) else value
                    self.notes.append(f"{key} differs between layers ({_short(shown)}): not modelled, left unknown")
                    self.varying.add(name)
                    return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
                raise ModelReadError(f"config.json: {key} must be an integer, got {value!r}")
            return int(value)
        return None


def _short(values: Any) -> str:
    text = ", ".join(map(str, values[:6])) + (", ..." if len(values) > 6 else "")
    return text if len(text) < 80 else text[:77] + "..."


def aliased(cfg: dict, attribute_map: dict[str, str]) -> dict:
    """`cfg` with each common name a family's config class maps (attribute_map) filled from the key it stores."""
    out = dict(cfg)
    for common, stored in attribute_map.items():
        if out.get(common) is None and out.get(stored) is not None:
            out[common] = out[stored]
    return out


def with_defaults(cfg: dict, defaults: dict) -> dict:
    """`cfg` over `defaults`, skipping defaults whose key or a synonym `cfg` already has (an explicit null
    counts: DeepSeek-V2-Lite's "q_lora_rank": null means no query compression, not the default 1536)."""
    given = dict(cfg)
    out = {}
    for key, value in defaults.items():
        group = next((g for g in _SYNONYMS if key in g), (key,))
        if not any(k in given for k in group):
            out[key] = value
    out.update(given)
    return out


def family_of(model_type: str, architecture: str) -> str:
    if architecture in _ARCH_FAMILIES:
        return _ARCH_FAMILIES[architecture]
    if model_type in _FAMILY_ALIASES:
        return _FAMILY_ALIASES[model_type]
    return model_type or architecture


def merged_text_config(config: dict, family: str) -> dict:
    """The language model's config: text_config / llm_config for multimodal checkpoints, else the config itself."""
    for key in ("text_config", "llm_config", "language_config", "decoder"):  # decoder: MusicGen, VisionEncoderDecoder
        sub = config.get(key)
        if isinstance(sub, dict) and sub and (key != "decoder" or "model_type" in sub):
            merged = dict(sub)
            for inherited in ("torch_dtype", "dtype", "quantization_config"):
                if inherited not in merged and inherited in config:
                    merged[inherited] = config[inherited]
            if "model_type" not in merged:  # llava's text_config defaults to LlamaConfig
                merged["model_type"] = "llama"
            return merged
    return config


def norm_of(cfg: dict, family: str) -> str:
    if family == "chatglm":
        return "RMSNorm" if cfg.get("rmsnorm", True) else "LayerNorm"
    if family == "mpt" and cfg.get("no_bias", True):
        return "LayerNorm (no bias)"
    return "RMSNorm" if family in _RMS_FAMILIES else "LayerNorm"


def _rope_parameters(cfg: dict) -> dict:
    """transformers-5 rope_parameters, or transformers-4 rope_scaling + rope_theta, as one dict."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict):
        if "full_attention" in params and isinstance(params["full_attention"], dict):
            params = params["full_attention"]  # per-layer-type rope (gemma3-style)
        return dict(params)
    scaling = cfg.get("rope_scaling")
    merged = dict(scaling) if isinstance(scaling, dict) else {}
    if "type" in merged and "rope_type" not in merged:
        merged["rope_type"] = merged.pop("type")
    return merged


# Baichuan's configs carry no key for the position encoding (each size ships its own modeling file). vLLM's rule
# (model_executor/models/baichuan.py): BaichuanForCausalLM with hidden_size 4096 is Baichuan2-7B (rope), any other
# is Baichuan-13B / Baichuan2-13B (ALiBi); BaiChuanForCausalLM (capital C) is Baichuan-7B, always rope.
BAICHUAN2_7B_HIDDEN_SIZE = 4096


def baichuan_uses_alibi(architecture: str, hidden_size: int | None) -> bool:
    """Whether a Baichuan checkpoint biases attention with ALiBi (13B) instead of rotating q/k (7B)."""
    return architecture == "BaichuanForCausalLM" and hidden_size != BAICHUAN2_7B_HIDDEN_SIZE


def read_rope(cfg: dict, family: str, head_dim: int | None) -> tuple[str, str | None, float | None, dict | None, float]:
    """(position embedding kind, rope_type, rope_theta, rope_scaling, partial_rotary_factor)."""
    if family == "t5":
        return "relative", None, None, None, 1.0
    if family in ("bloom",) or cfg.get("alibi") or (cfg.get("attn_config") or {}).get("alibi"):
        return "alibi", None, None, None, 1.0
    if family == "baichuan" and baichuan_uses_alibi((cfg.get("architectures") or [""])[0], cfg.get("hidden_size")):
        return "alibi", None, None, None, 1.0
    if family in _LEARNED_POSITIONS or family == "mpt":
        return "learned", None, None, None, 1.0
    params = _rope_parameters(cfg)
    if family == "internlm" and not params:  # InternLM v1's rope is its `rotary` dict, as model_defs/internlm.py reads
        rotary = cfg.get("rotary") if isinstance(cfg.get("rotary"), dict) else {"base": 10000, "type": "dynamic"}
        base = float(rotary.get("base", 10000))
        if rotary.get("type", "dynamic") == "dynamic":
            return "rope", "dynamic", base, {"rope_type": "dynamic", "factor": rotary.get("scaling_factor", 1.0)}, 1.0
        return "rope", "default", base, None, 1.0
    theta = first(params, "rope_theta") or first(cfg, "rope_theta", "rotary_emb_base", "rope_base")
    if theta is None and family == "chatglm":
        theta = 10000.0 * float(cfg.get("rope_ratio", 1))
    partial = first(params, "partial_rotary_factor") or first(cfg, "partial_rotary_factor", "rotary_pct")
    if partial is None and isinstance(cfg.get("rotary_dim"), int) and head_dim:  # gpt-j
        partial = cfg["rotary_dim"] / head_dim
    if partial is None and family in ("chatglm", "glm", "glm4"):
        partial = 0.5  # ChatGLM and GlmConfig rotate half of each head
    rope_type = str(params.get("rope_type") or "default")
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if rope_type == "default" and set(scaling) <= {"rope_type"}:
        scaling = {}
    return "rope", rope_type, float(theta) if theta is not None else 10000.0, scaling or None, float(partial or 1.0)


_POOLING_KEYS = (
    ("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"), ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"), ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)


def pooling_mode(pool_cfg: dict) -> str | None:
    """sentence-transformers 1_Pooling/config.json -> "mean" / "cls" / ... ("+"-joined when several)."""
    if isinstance(pool_cfg.get("pooling_mode"), str):
        return pool_cfg["pooling_mode"]
    modes = [name for key, name in _POOLING_KEYS if pool_cfg.get(key)]
    return "+".join(modes) if modes else None


def qwen_prompt_limit(cfg: dict) -> int | None:
    """The longest prompt llmctl takes for a Qwen (v1) config.json: seq_length where use_dynamic_ntk is on and the
    model has more positions, else None. Qwen's remote code picks the rope base from the prompt's length when it
    exceeds seq_length (dynamic NTK) and keeps it for the whole generation; llmctl's rope is one table per model,
    so it takes prompts up to seq_length, whose generations (rope base as is, logn-scaled queries past seq_length)
    then match the remote code's up to max_position_embeddings."""
    defaults = DEFAULTS["qwen"]
    max_pos = int(cfg.get("max_position_embeddings") or defaults["max_position_embeddings"])
    seq_length = cfg.get("seq_length")
    if cfg.get("use_dynamic_ntk", defaults["use_dynamic_ntk"]) and seq_length and int(seq_length) < max_pos:
        return int(seq_length)
    return None
