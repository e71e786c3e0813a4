"""Parameter counts (config, safetensors headers or GGUF tensor table), weight bytes and KV-cache bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llmctl.core.errors import LlmctlError, UnsupportedModelError, UsageError
from llmctl.core.param_count import count, has_lm_head
from llmctl.core.safetensors_header import SAFETENSORS_DTYPE_BITS
from llmctl.core.spec import ModelSpec

__all__ = [
    "ParamCount", "count_parameters", "count_active_parameters", "parameter_count", "count_from_safetensors",
    "count_from_gguf", "dtype_bytes", "weight_bytes", "weight_bytes_table", "kv_cache_bytes_per_token",
    "kv_cache_note", "count_note", "has_lm_head", "safetensors_bytes", "checkpoint_dtype", "state_bytes_per_sequence",
]


@dataclass(frozen=True, slots=True)
class ParamCount:
    """An exact parameter count and where it came from ("safetensors" | "gguf" | "config")."""

    total: int
    active: int | None  # None for an MoE model whose experts-per-token count is unknown
    source: str
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "active": self.active, "source": self.source, "note": self.note}


def count_parameters(spec: ModelSpec) -> int:
    """Exact count from config alone (what transformers would build); UnsupportedModelError when unknown."""
    return count(spec).total


def count_active_parameters(spec: ModelSpec) -> int:
    """Parameters one token passes through: the total less the routed experts it is not sent to."""
    counts = count(spec)
    if counts.inactive is None:
        raise UnsupportedModelError("the experts-per-token count is unknown, so the active parameters are too")
    return counts.total - counts.inactive


def count_note(spec: ModelSpec) -> str | None:
    """What the config count covers, when that is not simply 'the whole model'."""
    return count(spec).note


# Tensors that hold no parameters of their own: quantization scales / zero points / indices, and buffers
# that old checkpoints saved (GPT-2's causal mask `attn.bias`, rotary inv_freq).
_AUX_SUFFIXES = (
    ".weight_scale_inv", ".weight_scale", ".input_scale", ".output_scale", ".k_scale", ".v_scale", ".qzeros",
    ".scales", ".g_idx", ".weight_zero_point", ".weight_g_idx", ".weight_shape", ".absmax", ".quant_map",
    ".nested_absmax", ".nested_quant_map", ".SCB", ".rotary_emb.inv_freq", ".attn.masked_bias", "final_logits_bias",
)
_PACKED_SUFFIXES = (".qweight", ".weight_packed")


def count_from_safetensors(header: dict[str, tuple[str, tuple[int, ...]]], quant: dict | None = None) -> int:
    """Sum of tensor sizes from safetensors headers; packed int4/int8 weights unpacked, scales left out."""
    bits = int((quant or {}).get("bits") or (quant or {}).get("w_bit") or _ct_bits(quant) or 4)
    bnb_4bit = bool((quant or {}).get("load_in_4bit")) or (quant or {}).get("_load_in_4bit") is True
    total = 0
    for name, (dtype, shape) in header.items():
        if name.endswith(_AUX_SUFFIXES) or ".quant_state." in name:
            continue
        if name.endswith(".attn.bias") and len(shape) == 4:  # GPT-2 / GPT-J causal-mask buffer
            continue
        if dtype in ("I64", "BOOL"):  # saved buffers (BERT's embeddings.position_ids), never weights
            continue
        numel = math.prod(shape)
        if name.endswith(_PACKED_SUFFIXES) and dtype in ("I32", "U32"):
            numel *= 32 // bits
        elif bnb_4bit and dtype == "U8" and name.endswith(".weight"):
            numel *= 2
        total += numel
    return total


def _ct_bits(quant: dict | None) -> int | None:
    """compressed-tensors: num_bits of the first weight scheme."""
    for group in ((quant or {}).get("config_groups") or {}).values():
        weights = group.get("weights") if isinstance(group, dict) else None
        if isinstance(weights, dict) and weights.get("num_bits"):
            return int(weights["num_bits"])
    return None


def count_from_gguf(info: Any) -> int:
    """Sum of the element counts in a GGUF file's tensor table."""
    return sum(int(t.n_elements) for t in info.tensors)


def safetensors_bytes(header: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    """Bytes the tensors of a checkpoint take, as stored (quantization scales included)."""
    return sum(math.ceil(math.prod(shape) * SAFETENSORS_DTYPE_BITS.get(dtype, 16) / 8)
               for dtype, shape in header.values())


def checkpoint_dtype(spec: ModelSpec) -> str | None:
    """The dtype weights are stored in: the quantized format when config.json declares one."""
    quant = spec.quantization_config or {}
    method = str(quant.get("quant_method", "")).lower()
    if method == "fp8" or (method == "compressed-tensors" and _ct_bits(quant) == 8 and "float" in str(quant)):
        return "fp8"
    if method in ("gptq", "awq", "compressed-tensors") and (quant.get("bits") or quant.get("w_bit")
                                                           or _ct_bits(quant)):
        return f"int{int(quant.get('bits') or quant.get('w_bit') or _ct_bits(quant))}"
    if method == "bitsandbytes":
        return "int4" if quant.get("load_in_4bit") or quant.get("_load_in_4bit") else "int8"
    return spec.torch_dtype


def parameter_count(spec: ModelSpec, source: Any = None, *, header: Any = None) -> ParamCount | None:
    """The best exact count available: safetensors headers, then the GGUF tensor table, then config.

    Returns None only when no weights are reachable and the family has no formula. For MoE models the
    active count is the file total less the routed experts a token skips (that part comes from config).
    """
    try:
        counts = count(spec)
    except LlmctlError:
        counts = None
    inactive = counts.inactive if counts else 0

    def active(total: int) -> int | None:
        return None if inactive is None else total - inactive

    if source is not None or header is not None:
        if header is None:
            header = source.safetensors_header()
        if header:
            total = count_from_safetensors(header, spec.quantization_config)
            note = "sum of safetensors tensor shapes"
            if spec.family == "deepseek_v3" and counts and total > counts.total:
                note += " (includes the multi-token-prediction layer)"
            return ParamCount(total, active(total), "safetensors", note)
        info = getattr(source, "gguf_info", None) if source is not None else None
        if info is not None:
            total = count_from_gguf(info)
            return ParamCount(total, active(total), "gguf", "sum of GGUF tensor element counts")
    if counts is None:
        return None
    return ParamCount(counts.total, active(counts.total), "config", counts.note)


_DTYPE_BITS = {
    "float64": 64, "f64": 64, "double": 64, "float32": 32, "fp32": 32, "f32": 32, "float": 32,
    "float16": 16, "fp16": 16, "f16": 16, "half": 16, "bfloat16": 16, "bf16": 16,
    "float8": 8, "fp8": 8, "float8_e4m3fn": 8, "float8_e5m2": 8, "float8_e4m3fnuz": 8, "float8_e5m2fnuz": 8,
    "f8_e4m3": 8, "f8_e5m2": 8, "int8": 8, "i8": 8,
    "u8": 8, "uint8": 8, "q8_0": 8.5, "int4": 4, "uint4": 4, "q4": 4, "nf4": 4, "fp4": 4, "q4_0": 4.5, "q4_1": 5,
    "q5_0": 5.5, "q5_1": 6, "q2_k": 2.625, "q3_k": 3.4375, "q4_k": 4.5, "q5_k": 5.5, "q6_k": 6.5625,
}
_DTYPE_BITS.update({f"mostly_{k}": v for k, v in list(_DTYPE_BITS.items())})


def dtype_bytes(dtype: str) -> float:
    """Bytes per parameter for a dtype name (torch, safetensors, GGUF or short spellings)."""
    key = str(dtype).lower().removeprefix("torch.").replace("-", "_")
    if key not in _DTYPE_BITS:
        raise UsageError(f"unknown dtype {dtype!r}", hint=f"use one of: {', '.join(sorted(_DTYPE_BITS)[:12])}, ...")
    return _DTYPE_BITS[key] / 8


def weight_bytes(num_params: int, dtype: str) -> int:
    """Bytes of the weights alone at `dtype` (no quantization scales, no activations, no KV cache)."""
    return math.ceil(num_params * dtype_bytes(dtype))


def weight_bytes_table(num_params: int, checkpoint_dtype: str | None) -> dict[str, int]:
    """{checkpoint dtype, bf16, fp8, int4} -> bytes; unknown checkpoint dtypes are left out."""
    table: dict[str, int] = {}
    if checkpoint_dtype:
        try:
            table[f"checkpoint ({checkpoint_dtype})"] = weight_bytes(num_params, checkpoint_dtype)
        except UsageError:
            pass
    for dtype in ("bf16", "fp8", "int4"):
        table[dtype] = weight_bytes(num_params, dtype)
    return table


def kv_cache_bytes_per_token(spec: ModelSpec, dtype_bytes: float = 2) -> int | None:
    """KV-cache bytes one token adds, over all layers, as a paged cache stores it; None when the config
    does not give the sizes it takes.

    MLA (DeepSeek-V2/V3): one compressed latent (kv_lora_rank) plus the shared rope key (qk_rope_head_dim)
    per layer, as vLLM caches it. Encoder-only and attention-free models keep no cache (0); hybrid models
    count only their attention layers (their Mamba / linear-attention layers keep a fixed state instead, see
    state_bytes_per_sequence). For encoder-decoder models this is the decoder self-attention; cross-attention
    keys/values are per source token. Sliding-window layers cost the same per token but stop growing at the
    window (see kv_cache_note).
    """
    if spec.kind == "encoder-only" or spec.attention == "none":
        return 0
    layers = spec.num_decoder_layers or spec.num_layers
    if spec.layer_plan is not None and spec.kind != "encoder-decoder":
        layers = spec.layer_plan.kv_layers
    layers = _kv_layers(spec, layers)
    if spec.mla is not None:
        per_layer = spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim
    elif spec.num_kv_heads is None or spec.head_dim is None:
        return None
    else:
        per_layer = 2 * spec.num_kv_heads * spec.head_dim
    if layers is None:
        return None
    return math.ceil(layers * per_layer * dtype_bytes)


def _kv_layers(spec: ModelSpec, layers: int | None) -> int | None:
    # Gemma 3n: the last num_kv_shared_layers reuse earlier layers' keys and values and cache none of their own
    shared = spec.text_config.get("num_kv_shared_layers")
    if layers is not None and isinstance(shared, int) and not isinstance(shared, bool) and 0 < shared < layers:
        return layers - shared
    return layers


def state_bytes_per_sequence(spec: ModelSpec, dtype_bytes: float = 2) -> int | None:
    """Bytes of the fixed-size state each sequence keeps in Mamba layers (0 without any); None when the config
    does not give its sizes, or the model has state layers of another kind (linear attention, convolution)."""
    from llmctl.core.layer_plan import mamba_state_elements

    plan = spec.layer_plan
    if plan is None or not plan.state_layers:
        return 0
    total = 0
    for kind, layers in plan.state_layers.items():
        per_layer = mamba_state_elements(spec.text_config, spec.hidden_size, kind) if "mamba" in kind else None
        if per_layer is None:
            return None
        total += layers * per_layer
    return math.ceil(total * dtype_bytes)


def kv_cache_note(spec: ModelSpec) -> str | None:
    if spec.kind == "encoder-only":
        return "encoder-only: no KV cache"
    if spec.attention == "none":
        return "attention-free: no KV cache; each sequence keeps a fixed-size state instead"
    plan = spec.layer_plan
    if plan is not None and spec.num_layers and plan.state_layers:
        return plan.describe(spec.num_layers) + " (a fixed-size state per sequence)"
    if spec.num_layers and _kv_layers(spec, spec.num_layers) != spec.num_layers:
        return (f"the last {spec.num_layers - _kv_layers(spec, spec.num_layers)} layers reuse earlier layers' "
                "keys and values")
    if spec.mla is not None:
        return f"MLA: latent {spec.mla.kv_lora_rank} + rope key {spec.mla.qk_rope_head_dim} per layer"
    if spec.sliding_window:
        types = spec.text_config.get("layer_types") or []
        if types and "full_attention" in types:
            sliding = sum(1 for t in types if t == "sliding_attention")
            return f"{sliding} of {len(types)} layers keep only the last {spec.sliding_window} tokens"
        if spec.text_family == "gemma2":  # hub configs predate layer_types: even layers slide, odd are global
            return f"every other layer keeps only the last {spec.sliding_window} tokens"
        return f"sliding window: the cache stops growing at {spec.sliding_window} tokens"
    if spec.kind == "encoder-decoder":
        return "decoder self-attention only; cross-attention adds the same per source token"
    return None
