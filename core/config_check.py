"""Refuse config.json values no model can have, before anything is computed or built from them.

One function, `validate_config`, used by every reader of config.json: the metadata commands (through
core/spec.py) and the engine (core/engine/model_source.py), so `check` and `generate` refuse the same
configs with the same message (exit 3, a model that cannot be read). Keys a family does not use are
not looked at; a key that is present must hold a value of the right kind. Per-layer lists (one value
per layer, as OpenELM and Gemma-3n write some sizes) are checked element by element.
"""

from __future__ import annotations

from typing import Any

from llmctl.core.config_keys import DEFAULTS
from llmctl.core.errors import ModelReadError
from llmctl.core.values import as_int, is_finite_number

# (spellings of one size, least allowed, most allowed, may be a per-layer list). The upper bounds are far
# above any real model (the largest have ~200 layers, hidden sizes of ~30k, vocabularies of ~1M, 10M positions)
# and stop a config from asking for a model that could never be built (10^12 layers) before anything loops
# over it. Per-layer lists are what OpenELM and Gemma-3n write for the sizes that vary from layer to layer.
_SIZES: tuple[tuple[tuple[str, ...], int, int, bool], ...] = (
    (("hidden_size", "n_embd", "d_model"), 1, 1 << 20, False),
    (("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers", "decoder_layers",
      "num_decoder_layers"), 1, 100_000, False),
    (("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
      "decoder_attention_heads"), 1, 1 << 16, True),
    (("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num"), 1, 1 << 16, True),
    (("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim",
      "moe_intermediate_size", "shared_expert_intermediate_size"), 0, 1 << 24, True),
    (("vocab_size", "padded_vocab_size", "n_vocab"), 1, 1 << 30, False),
    (("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length"), 1, 1 << 31,
     False),
    (("head_dim", "kv_channels", "d_kv", "attention_head_size"), 0, 1 << 16, True),  # 0: derived (GLM-5's MLA)
    (("num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts"), 0, 1 << 16, False),
    (("num_experts_per_tok", "num_experts_per_token", "moe_top_k"), 0, 1 << 16, False),
    (("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"), 0, 1 << 16, False),
)
# Other counts the readers take as integers (family-specific: DeepSeek's dense prefix, GPT-J's rotary_dim, ...).
_COUNTS = ("first_k_dense_replace", "n_shared_experts", "moe_layer_freq", "decoder_sparse_step", "rotary_dim",
           "type_vocab_size", "num_ln_in_parallel_attn", "word_embed_proj_dim", "relative_attention_num_buckets",
           "num_nextn_predict_layers", "num_channels", "embed_dim", "depth", "in_channels", "in_chans",
           "temporal_patch_size", "spatial_merge_size", "kv_n_heads")
_SHAPES = ("patch_size", "image_size")  # an integer, or one per dimension
_INDEX_LISTS = ("mlp_only_layers",)  # lists of layer indices
_NAME_LISTS = ("layer_types", "architectures")  # lists of names
# Objects the readers descend into: when present, they must be objects.
_OBJECTS = ("attn_config", "vision_config", "rope_scaling", "rope_parameters", "quantization_config",
            "compression_config")
# Numbers that must be finite (and positive, for the rope base and scale factors).
_POSITIVE_NUMBERS = ("rope_theta", "rotary_emb_base", "rope_base", "partial_rotary_factor", "rotary_pct")
_FINITE_NUMBERS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "initializer_range")
# rope_scaling / rope_parameters members that are numbers, and those that are lists of numbers.
_ROPE_NUMBERS = ("factor", "rope_theta", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow",
                 "attention_factor", "attn_factor", "mscale", "mscale_all_dim", "extrapolation_factor",
                 "partial_rotary_factor")
_ROPE_POSITIVE = ("factor", "rope_theta")
_ROPE_INTS = ("original_max_position_embeddings",)
_ROPE_LISTS = ("short_factor", "long_factor", "mrope_section")
# The dtype names config.json files use (torch's, with or without "torch."), and GGUF file types read into it.
_DTYPES = {"float32", "float", "fp32", "float16", "half", "fp16", "bfloat16", "bf16", "float64", "double",
           "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "int8", "uint8", "auto"}
_SUB_CONFIGS = ("text_config", "llm_config", "language_config")


def validate_config(config: Any, where: str = "config.json") -> None:
    """Raise ModelReadError naming the key when a value in `config` is of the wrong kind or out of range."""
    if not isinstance(config, dict):
        raise ModelReadError(f"{where} must hold a JSON object, not {type(config).__name__}")
    _check_part(config, where)
    for key in (*_SUB_CONFIGS, "vision_config", "attn_config"):
        sub = config.get(key)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ModelReadError(f"{where}: {key} must be an object, got {_show(sub)}")
        _check_part(sub, f"{where}: {key}", language=key in _SUB_CONFIGS)


def _check_part(cfg: dict, where: str, language: bool = True) -> None:
    for key in _OBJECTS:
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise ModelReadError(f"{where}: {key} must be an object, got {_show(cfg[key])}")
    for keys, low, high, per_layer in _SIZES:
        for key in keys:
            _check_size(cfg, key, low, high, per_layer, where)
    if language:  # vision towers name their sizes their own way (hidden_size may be the projector's output)
        _check_head_split(cfg, where)
    for key in _COUNTS:  # vision towers give some per stage: a list is checked entry by entry
        _check_size(cfg, key, 0, 1 << 24, True, where)
    for key in _SHAPES:
        _check_size(cfg, key, 1, 1 << 24, True, where)
    for key in _INDEX_LISTS:
        value = cfg.get(key)
        if value is not None and (not isinstance(value, list) or any(_integral(v) is None for v in value)):
            raise ModelReadError(f"{where}: {key} must be a list of layer numbers, got {_show(value)}")
    for key in _NAME_LISTS:
        value = cfg.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise ModelReadError(f"{where}: {key} must be a list of names, got {_show(value)}")
    for key in ("mlp_ratio", "expansion_ratio"):
        value = cfg.get(key)
        values = value if isinstance(value, list) else [value]
        if value is not None and not all(is_finite_number(v) and v > 0 for v in values):
            raise ModelReadError(f"{where}: {key} must be a positive number, got {_show(value)}")
    for key in _POSITIVE_NUMBERS:
        value = cfg.get(key)
        if value is not None and (not is_finite_number(value) or value <= 0):
            raise ModelReadError(f"{where}: {key} must be a positive number, got {_show(value)}")
    for key in _FINITE_NUMBERS:
        value = cfg.get(key)
        if value is not None and (not is_finite_number(value) or value < 0):
            raise ModelReadError(f"{where}: {key} must be a non-negative number, got {_show(value)}")
    for key in ("rope_scaling", "rope_parameters"):
        _check_rope(cfg.get(key), f"{where}: {key}")
    for key in ("torch_dtype", "dtype"):
        _check_dtype(cfg.get(key), f"{where}: {key}")
    for key in ("quantization_config", "compression_config"):
        _check_quantization(cfg.get(key), f"{where}: {key}")


def _check_size(cfg: dict, key: str, low: int, high: int, per_layer: bool, where: str) -> None:
    value = cfg.get(key)
    if value is None:
        return
    values = value if per_layer and isinstance(value, list) and value else [value]  # per-layer: every entry
    if isinstance(value, dict) and value:  # one count per part (LXMERT: language, vision, cross_encoder layers)
        values = list(value.values())
    for item in values:
        number = _integral(item)
        if number is None or number < low:
            what = "a positive integer" if low == 1 else "an integer >= 0"
            raise ModelReadError(f"{where}: {key} must be {what}, got {_show(value)}")
        if number > high:
            raise ModelReadError(f"{where}: {key} = {number:,} is implausibly large (at most {high:,})")


def _integral(value: Any) -> int | None:
    """An int, or a float holding an integer (1024.0, as some exporters write sizes); else None."""
    if isinstance(value, float) and is_finite_number(value) and value.is_integer():
        return int(value)
    return as_int(value)


def _first_int(cfg: dict, *keys: str) -> int | None:
    for key in keys:
        value = _integral(cfg.get(key))
        if value is not None:
            return value
    return None


def family_is_read(cfg: dict) -> bool:
    """Whether llmctl knows this family's config class (core/config_keys.DEFAULTS): its head size and position
    encoding are read, not guessed."""
    return str(cfg.get("model_type") or "") in DEFAULTS


def head_size_is_derived(cfg: dict) -> bool:
    """Whether llmctl derives this config's head size as hidden_size / heads, as transformers does: no explicit
    head size, and a family whose config class llmctl reads."""
    if not family_is_read(cfg):
        return False
    return not any(cfg.get(k) for k in ("head_dim", "kv_channels", "d_kv", "attention_head_size", "kv_lora_rank"))


def _check_head_split(cfg: dict, where: str) -> None:
    """Without an explicit head size, the hidden size must split evenly into the heads (transformers' rule).

    Only for the families llmctl reads (core/config_keys.DEFAULTS): those derive the head size from
    hidden_size / heads; others (GLM-4-MoE) default head_dim in their config class, which llmctl cannot see.
    """
    if not head_size_is_derived(cfg):
        return
    hidden = _first_int(cfg, "hidden_size", "n_embd", "d_model")
    heads = _first_int(cfg, "num_attention_heads", "n_head", "n_heads", "num_heads")
    if hidden is not None and heads is not None and hidden % heads:
        raise ModelReadError(
            f"{where}: hidden_size {hidden} does not split into {heads} attention heads "
            f"({hidden / heads:g} per head); a config without head_dim needs hidden_size divisible by the heads"
        )


def _check_rope(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ModelReadError(f"{where} must be an object or null, got {_show(value)}")
    parts = [v for v in value.values() if isinstance(v, dict)]  # per-layer-type rope (full_attention: {...})
    for part in [value, *parts]:
        for key in _ROPE_NUMBERS:
            number = part.get(key)
            if number is None:
                continue
            if not is_finite_number(number) or (key in _ROPE_POSITIVE and number <= 0):
                kind = "a positive number" if key in _ROPE_POSITIVE else "a number"
                raise ModelReadError(f"{where}: {key} must be {kind}, got {_show(number)}")
        for key in _ROPE_INTS:
            number = part.get(key)
            if number is not None and (_integral(number) is None or _integral(number) < 1):
                raise ModelReadError(f"{where}: {key} must be a positive integer, got {_show(number)}")
        for key in _ROPE_LISTS:
            items = part.get(key)
            if items is not None and (not isinstance(items, list) or not all(is_finite_number(x) for x in items)):
                raise ModelReadError(f"{where}: {key} must be a list of numbers, got {_show(items)}")
        for key in ("rope_type", "type"):
            if part.get(key) is not None and not isinstance(part[key], str):
                raise ModelReadError(f"{where}: {key} must be a name, got {_show(part[key])}")


def _check_dtype(value: Any, where: str) -> None:
    if value is None:
        return
    name = str(value).lower().removeprefix("torch.") if isinstance(value, str) else None
    if name not in _DTYPES:
        raise ModelReadError(
            f"{where} {_show(value)} is not a dtype llmctl knows",
            hint="use float32, float16 or bfloat16 (or remove the key)",
        )


def _check_quantization(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ModelReadError(f"{where} must be an object, got {_show(value)}")
    for key in ("bits", "w_bit"):
        bits = value.get(key)
        if bits is not None and (_integral(bits) is None or not 1 <= _integral(bits) <= 32):
            raise ModelReadError(f"{where}: {key} must be a whole number of bits from 1 to 32, got {_show(bits)}")
    for key in ("group_size", "q_group_size"):
        size = value.get(key)
        if size is not None and (_integral(size) is None or _integral(size) < -1 or _integral(size) == 0):
            raise ModelReadError(f"{where}: {key} must be a positive integer or -1, got {_show(size)}")
    method = value.get("quant_method")
    if method is not None and not isinstance(method, str):
        raise ModelReadError(f"{where}: quant_method must be a name, got {_show(method)}")


def _show(value: Any) -> str:
    """A value for an error message: its JSON-ish repr, cut short (a config value can be huge)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
