"""Quantization of a checkpoint, read from its config files or GGUF tensor types (no torch, no weights)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llmctl.core.errors import ModelReadError, UsageError

# Canonical method names, and the names users (and vLLM) pass to --quantization for each.
_ALIASES = {
    "awq": "awq", "awq_marlin": "awq",
    "gptq": "gptq", "gptq_marlin": "gptq", "marlin": "gptq",
    "fp8": "fp8", "fbgemm_fp8": "fp8",
    "bitsandbytes": "bitsandbytes", "bnb": "bitsandbytes",
    "compressed-tensors": "compressed-tensors", "compressed_tensors": "compressed-tensors",
    "gguf": "gguf",
}
_NOT_YET = ("llmctl's engine does not load {what} weights yet: today it runs unquantized (fp32/bf16/fp16) "
            "checkpoints and GGUF files (dequantised at load)")
_FP8_HW = "fp8 tensor cores: compute capability >= 8.9 (Ada L4/L40, Hopper H100/H200, Blackwell)"


@dataclass(frozen=True, slots=True)
class QuantInfo:
    """How a checkpoint is quantized, and whether llmctl can run it now."""

    method: str                               # canonical: awq, gptq, fp8, bitsandbytes, compressed-tensors, gguf, ...
    bits: int | None = None                   # weight bits (GGUF: of the dominant quantized type)
    group_size: int | None = None             # weights per scale; -1 = one scale per output channel
    symmetric: bool | None = None
    zero_point: bool | None = None
    act_order: bool | None = None
    modules_not_quantized: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    kernel: str = ""                          # what llmctl uses (or would use) for the matmuls
    supported: bool = False                   # can llmctl run it now
    reason: str | None = None                 # why not, when not supported
    min_compute_capability: tuple[int, int] | None = None
    hardware: str = ""
    size_vs_bf16: float | None = None         # quantized weights' bytes / the same weights in bf16, with scales/zeros
    source_file: str = "config.json"          # where the description was read

    def __post_init__(self) -> None:
        if not self.method:
            raise ModelReadError("quantization config: empty quant_method")
        if self.bits is not None and self.bits <= 0:
            raise ModelReadError(f"quantization config: bits must be positive, not {self.bits}")

    def to_dict(self) -> dict[str, Any]:
        cc = self.min_compute_capability
        return {
            "method": self.method, "bits": self.bits, "group_size": self.group_size,
            "symmetric": self.symmetric, "zero_point": self.zero_point, "act_order": self.act_order,
            "modules_not_quantized": list(self.modules_not_quantized), "kernel": self.kernel,
            "supported": self.supported, "reason": self.reason,
            "min_compute_capability": f"{cc[0]}.{cc[1]}" if cc else None, "hardware": self.hardware,
            "size_vs_bf16": self.size_vs_bf16, "source_file": self.source_file, "details": self.details,
        }


# ---------------------------------------------------------------------------------------------- helpers

def _int(cfg: dict, *keys: str, default: int | None = None) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ModelReadError(f"quantization config: {key} must be an integer, not {value!r}")
        return int(value)
    return default


def _bool(cfg: dict, key: str, default: bool | None = None) -> bool | None:
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, (bool, int)):
        raise ModelReadError(f"quantization config: {key} must be true or false, not {value!r}")
    return bool(value)


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise ModelReadError(f"quantization config: expected a list of module names, not {value!r}")
    return tuple(str(v) for v in value)


def _int_ratio(bits: int, group_size: int | None, zero_bits: float = 0.0, scale_bits: int = 16) -> float:
    """bf16 ratio of int weights with one scale (and optionally a zero) per group; per-channel costs ~nothing."""
    per_weight = bits + ((scale_bits + zero_bits) / group_size if group_size and group_size > 0 else 0.0)
    return round(per_weight / 16, 3)


def _clean(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if v is not None}


# ---------------------------------------------------------------------------------------------- methods

def _awq(cfg: dict, source_file: str) -> QuantInfo:
    bits = _int(cfg, "bits", "w_bit", default=4)
    group = _int(cfg, "group_size", "q_group_size", default=128)
    zero_point = _bool(cfg, "zero_point", True)
    version = str(cfg.get("version") or cfg.get("format") or "gemm").lower()
    details = _clean({"version": version, "backend": cfg.get("backend"), "do_fuse": cfg.get("do_fuse")})
    return QuantInfo(
        "awq", bits, group, symmetric=not zero_point, zero_point=zero_point, act_order=False,
        modules_not_quantized=_names(cfg.get("modules_to_not_convert")), details=details,
        kernel=f"int{bits} dequant + GEMM ({version} packing: qweight/qzeros/scales)",
        reason=_NOT_YET.format(what="AWQ"), min_compute_capability=(7, 5),
        hardware="CUDA GPU, compute capability >= 7.5 (AWQ kernels)",
        size_vs_bf16=_int_ratio(bits, group, zero_bits=bits if zero_point else 0), source_file=source_file)


def _gptq(cfg: dict, source_file: str) -> QuantInfo:
    bits = _int(cfg, "bits", default=4)
    group = _int(cfg, "group_size", default=128)
    sym = _bool(cfg, "sym", True)
    act_order = _bool(cfg, "desc_act", False)
    fmt = str(cfg.get("checkpoint_format") or cfg.get("format") or
              ("marlin" if cfg.get("is_marlin_format") else "gptq")).lower()
    use_exllama = _bool(cfg, "use_exllama")
    if use_exllama is None and cfg.get("disable_exllama") is not None:
        use_exllama = not _bool(cfg, "disable_exllama")
    exllama = cfg.get("exllama_config")
    meta = cfg.get("meta") if isinstance(cfg.get("meta"), dict) else {}
    # GPTQModel's per-module overrides: a key "-:regex" leaves the matching modules unquantized.
    dynamic = cfg.get("dynamic") if isinstance(cfg.get("dynamic"), dict) else {}
    skipped = tuple(k[2:] for k in dynamic if k.startswith("-:"))
    details = _clean({
        "checkpoint_format": fmt, "true_sequential": _bool(cfg, "true_sequential"),
        "damp_percent": cfg.get("damp_percent"), "static_groups": cfg.get("static_groups"),
        "use_exllama": use_exllama, "exllama_version": exllama.get("version") if isinstance(exllama, dict) else None,
        "lm_head_quantized": _bool(cfg, "lm_head"), "quantizer": meta.get("quantizer"),
        "modules_in_block_to_quantize": cfg.get("modules_in_block_to_quantize"),
        "dynamic": dynamic or None,
    })
    order = ", act-order g_idx" if act_order else ""
    return QuantInfo(
        "gptq", bits, group, symmetric=sym, zero_point=not sym, act_order=act_order,
        modules_not_quantized=_names(cfg.get("modules_to_not_convert")) + skipped, details=details,
        kernel=f"int{bits} dequant + GEMM ({fmt} packing: qweight/qzeros/scales{order})",
        reason=_NOT_YET.format(what="GPTQ"), min_compute_capability=(6, 0),
        hardware="CUDA GPU, compute capability >= 6.0 (GPTQ kernels; Marlin-style kernels need >= 8.0)",
        # qzeros are stored packed at `bits` even for symmetric checkpoints; g_idx adds 32 bits per input row (~0).
        size_vs_bf16=_int_ratio(bits, group, zero_bits=bits), source_file=source_file)


def _fp8(cfg: dict, method: str, source_file: str) -> QuantInfo:
    block = cfg.get("weight_block_size")
    if block is not None and (not isinstance(block, (list, tuple)) or len(block) != 2
                              or not all(isinstance(b, int) and b > 0 for b in block)):
        raise ModelReadError(f"quantization config: weight_block_size must be two positive integers, not {block!r}")
    if method == "fbgemm_fp8":
        scheme, granularity = "dynamic", "per-channel"  # FBGEMM: per-row weight scales, per-token activations
    else:
        scheme = str(cfg.get("activation_scheme") or "dynamic").lower()
        granularity = f"block {block[0]}x{block[1]}" if block else "per-tensor"
    skipped = _names(cfg.get("modules_to_not_convert")) + _names(cfg.get("ignored_layers"))
    details = _clean({
        "variant": method, "activation_scheme": scheme, "weight_scale": granularity,
        "weight_block_size": list(block) if block else None, "fmt": cfg.get("fmt"),
        "activation_scale_ub": cfg.get("activation_scale_ub"), "scale_fmt": cfg.get("scale_fmt"),
        "kv_cache_scheme": cfg.get("kv_cache_scheme"),
    })
    scale_bits = 32 / (block[0] * block[1]) if block else 0.0  # one fp32 scale per block; per-tensor/row ~0
    return QuantInfo(
        "fp8", 8, None, symmetric=True, zero_point=False, act_order=False, modules_not_quantized=skipped,
        details=details, kernel=f"fp8 e4m3 scaled GEMM ({granularity} weight scales, {scheme} activation scales)",
        reason=_NOT_YET.format(what="fp8"), min_compute_capability=(8, 9), hardware=_FP8_HW,
        size_vs_bf16=round((8 + scale_bits) / 16, 3), source_file=source_file)


def _bitsandbytes(cfg: dict, source_file: str) -> QuantInfo:
    four = bool(_bool(cfg, "load_in_4bit") or _bool(cfg, "_load_in_4bit"))
    eight = bool(_bool(cfg, "load_in_8bit") or _bool(cfg, "_load_in_8bit"))
    if four == eight:
        raise ModelReadError("bitsandbytes config: exactly one of load_in_4bit / load_in_8bit must be true")
    skipped = _names(cfg.get("llm_int8_skip_modules"))
    if four:
        qtype = str(cfg.get("bnb_4bit_quant_type") or "fp4").lower()
        double = bool(_bool(cfg, "bnb_4bit_use_double_quant", False))
        details = _clean({"quant_type": qtype, "double_quant": double,
                          "compute_dtype": cfg.get("bnb_4bit_compute_dtype"),
                          "quant_storage": cfg.get("bnb_4bit_quant_storage")})
        # One absmax per 64 weights: fp32, or (double quant) int8 plus one fp32 per 256 absmax values.
        absmax_bits = (8 / 64 + 32 / (64 * 256)) if double else 32 / 64
        return QuantInfo(
            "bitsandbytes", 4, 64, symmetric=True, zero_point=False, act_order=False, modules_not_quantized=skipped,
            details=details, kernel=f"bitsandbytes {qtype} 4-bit dequant + GEMM",
            reason=_NOT_YET.format(what="bitsandbytes"), min_compute_capability=(7, 0),
            hardware="CUDA GPU with the bitsandbytes kernels (compute capability >= 7.0)",
            size_vs_bf16=round((4 + absmax_bits) / 16, 3), source_file=source_file)
    fp16_weight = bool(_bool(cfg, "llm_int8_has_fp16_weight", False))
    details = _clean({"threshold": cfg.get("llm_int8_threshold"), "has_fp16_weight": fp16_weight})
    return QuantInfo(
        "bitsandbytes", 8, -1, symmetric=True, zero_point=False, act_order=False, modules_not_quantized=skipped,
        details=details, kernel="bitsandbytes LLM.int8() (int8 GEMM with fp16 outlier columns)",
        reason=_NOT_YET.format(what="bitsandbytes"), min_compute_capability=(7, 0),
        hardware="CUDA GPU with the bitsandbytes kernels (compute capability >= 7.0)",
        size_vs_bf16=1.0 if fp16_weight else 0.5, source_file=source_file)


def _quant_args(args: Any, where: str) -> dict[str, Any] | None:
    if args is None:
        return None
    if not isinstance(args, dict):
        raise ModelReadError(f"compressed-tensors config: {where} must be an object, not {args!r}")
    return args


def _ct_scheme(weights: dict, acts: dict | None) -> str:
    wbits, wtype = weights.get("num_bits"), str(weights.get("type") or "int")
    if wtype == "float" and wbits == 4 and weights.get("group_size") == 16:
        return "NVFP4" if acts else "NVFP4A16"
    if acts is None:
        return f"W{wbits}A16" + ("-FP8" if wtype == "float" else "")
    abits = acts.get("num_bits")
    return f"W{wbits}A{abits}-" + ("FP8" if wtype == "float" else f"INT{abits}")


def _compressed_tensors(cfg: dict, source_file: str) -> QuantInfo:
    groups = cfg.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise ModelReadError("compressed-tensors config: config_groups must be a non-empty object")
    described, weights_list, acts_list = [], [], []
    for name, group in groups.items():
        if not isinstance(group, dict):
            raise ModelReadError(f"compressed-tensors config: config_groups.{name} must be an object")
        weights = _quant_args(group.get("weights"), f"{name}.weights") or {}
        acts = _quant_args(group.get("input_activations"), f"{name}.input_activations")
        weights_list.append(weights)
        acts_list.append(acts)
        described.append(_clean({
            "name": name, "targets": group.get("targets"), "scheme": _ct_scheme(weights, acts) if weights else None,
            "weights": {k: weights.get(k) for k in ("num_bits", "type", "strategy", "group_size", "symmetric",
                                                     "dynamic", "actorder", "block_structure") if k in weights},
            "input_activations": None if acts is None else {
                k: acts.get(k) for k in ("num_bits", "type", "strategy", "symmetric", "dynamic") if k in acts},
        }))
    weights, acts = weights_list[0], acts_list[0]
    bits = _int(weights, "num_bits")
    strategy = str(weights.get("strategy") or "tensor")
    group = _int(weights, "group_size") if strategy == "group" else (-1 if strategy == "channel" else None)
    sym = _bool(weights, "symmetric", True)
    is_float = weights.get("type") == "float"
    scheme = _ct_scheme(weights, acts) if weights else "unknown"
    actorder = weights.get("actorder")
    details = _clean({
        "format": cfg.get("format"), "scheme": scheme, "groups": described,
        "quantization_status": cfg.get("quantization_status"), "kv_cache_scheme": cfg.get("kv_cache_scheme"),
        "sparsity_config": cfg.get("sparsity_config") or None,
    })
    if is_float and bits == 8:
        cc, hardware = (8, 9), _FP8_HW
    elif scheme.startswith("NVFP4"):
        cc, hardware = (10, 0), "fp4 tensor cores: compute capability >= 10.0 (Blackwell)"
    elif acts is not None and not is_float:
        cc, hardware = (7, 5), "CUDA GPU with int8 tensor cores (compute capability >= 7.5)"
    else:
        cc, hardware = (8, 0), "CUDA GPU, compute capability >= 8.0 (mixed-precision int GEMM)"
    block = weights.get("block_structure")
    if not bits:
        size = None
    elif strategy == "block" and isinstance(block, list) and len(block) == 2 and all(
            isinstance(b, int) and b > 0 for b in block):
        size = round((bits + 32 / (block[0] * block[1])) / 16, 3)  # one fp32 scale per block
    else:  # fp8 (e4m3) group scales for NVFP4, bf16 ones otherwise; asymmetric zeros stored as int8
        size = _int_ratio(bits, group if group and group > 0 else None, zero_bits=0 if sym else 8,
                          scale_bits=8 if scheme.startswith("NVFP4") else 16)
    return QuantInfo(
        "compressed-tensors", bits, group, symmetric=sym, zero_point=not sym,
        act_order=actorder not in (None, False), modules_not_quantized=_names(cfg.get("ignore")),
        details=details, kernel=f"{scheme} GEMM ({cfg.get('format') or 'compressed'} weights, {strategy} scales)",
        reason=_NOT_YET.format(what="compressed-tensors"), min_compute_capability=cc, hardware=hardware,
        size_vs_bf16=size, source_file=source_file)


def _unknown(cfg: dict, method: str, source_file: str) -> QuantInfo:
    bits = cfg.get("bits") if isinstance(cfg.get("bits"), int) else None
    return QuantInfo(
        method, bits, cfg.get("group_size") if isinstance(cfg.get("group_size"), int) else None,
        details={"config": cfg}, kernel="none", supported=False,
        reason=f"llmctl does not know the {method!r} quantization method", source_file=source_file)


# ---------------------------------------------------------------------------------------------- GGUF

_PLAIN_GGML = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}
# The types core/engine/gguf_dequant.py dequantises (kept equal to its SUPPORTED_TYPES by a test; importing it
# here would pull torch into the metadata path).
GGUF_LOADABLE = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
                          | _PLAIN_GGML)
_GGML_WITH_MIN = {"Q4_1", "Q5_1", "Q2_K", "Q4_K", "Q5_K"}  # blocks store a scale and a minimum (asymmetric)


def _ggml_nominal_bits(type_name: str) -> int | None:
    match = re.match(r"^(?:I?Q|TQ|MXFP|NVFP)(\d+)", type_name)
    return int(match.group(1)) if match else None


def _file_type_name(file_type: Any) -> str | None:
    if file_type is None or isinstance(file_type, str):
        return file_type
    from llmctl.core.gguf_meta import FILE_TYPES

    return FILE_TYPES.get(int(file_type), str(file_type))


def _gguf(info: Any) -> QuantInfo:
    counts: Counter[str] = Counter()
    elements: Counter[str] = Counter()
    nbytes: Counter[str] = Counter()
    float_matrices: set[str] = set()
    for name, type_name, shape, n_elements, n_bytes in info.tensors:
        counts[type_name] += 1
        elements[type_name] += int(n_elements)
        nbytes[type_name] += int(n_bytes)
        if type_name in _PLAIN_GGML and len([d for d in shape if d > 1]) >= 2:
            float_matrices.add(re.sub(r"^blk\.\d+\.", "blk.*.", name))
    quantized = [t for t in elements if t not in _PLAIN_GGML]
    dominant = max(quantized, key=lambda t: elements[t]) if quantized else None
    from llmctl.core.gguf_meta import GGML_TYPES

    blocks = {type_name: block for type_name, block, _ in GGML_TYPES.values()}
    unreadable = sorted(t for t in counts if t not in GGUF_LOADABLE)
    total_elements = sum(elements.values())
    bpw = 8 * sum(nbytes.values()) / total_elements if total_elements else None
    details = _clean({
        "file_type": _file_type_name(getattr(info, "file_type", None)),
        "architecture": getattr(info, "architecture", None),
        "tensor_types": {t: {"tensors": counts[t], "elements": elements[t], "bytes": nbytes[t],
                             "bits_per_weight": round(8 * nbytes[t] / elements[t], 3) if elements[t] else None}
                         for t in sorted(counts, key=lambda t: -elements[t])},
        "bits_per_weight": round(bpw, 3) if bpw else None,
        "memory_after_load": "weights are dequantised to the model dtype at load (bf16: 1.0x)",
    })
    reason = f"llmctl cannot dequantise GGUF tensor types {', '.join(unreadable)} yet" if unreadable else None
    return QuantInfo(
        "gguf", _ggml_nominal_bits(dominant) if dominant else None, blocks.get(dominant) if dominant else None,
        symmetric=None if dominant is None else dominant not in _GGML_WITH_MIN,
        zero_point=None if dominant is None else dominant in _GGML_WITH_MIN, act_order=False,
        modules_not_quantized=tuple(sorted(float_matrices)), details=details,
        kernel="dequantise at load (llmctl's GGUF dequantiser), then dense GEMM in the model dtype",
        supported=not unreadable, reason=reason, min_compute_capability=None,
        hardware="any device (CPU or GPU): weights are dequantised at load",
        size_vs_bf16=round(bpw / 16, 3) if bpw else None, source_file="gguf")


# ---------------------------------------------------------------------------------------------- entry points

def _detect_legacy_method(cfg: dict) -> str:
    """quantize_config.json (AutoGPTQ) / quant_config.json (AutoAWQ) often carry no quant_method."""
    if any(k in cfg for k in ("w_bit", "q_group_size", "zero_point", "version")):
        return "awq"
    if any(k in cfg for k in ("desc_act", "damp_percent", "sym", "true_sequential")):
        return "gptq"
    raise ModelReadError("the quantization config names no quant_method and looks like neither GPTQ nor AWQ")


def parse_quantization(config: dict, quantize_config: dict | None = None, gguf_info: Any = None,
                       *, quantize_config_name: str = "quantize_config.json") -> QuantInfo | None:
    """How the checkpoint is quantized, or None when it is not. Pure: reads only its arguments."""
    if gguf_info is not None:
        return _gguf(gguf_info)
    if not isinstance(config, dict):
        raise ModelReadError(f"config.json must hold an object, not {type(config).__name__}")
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    cfg = config.get("quantization_config") or config.get("compression_config") or \
        text_config.get("quantization_config")
    source_file = "config.json"
    if cfg is None and quantize_config:
        cfg, source_file = quantize_config, quantize_config_name
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise ModelReadError(f"{source_file}: quantization_config must be an object, not {cfg!r}")
    raw = cfg.get("quant_method")
    method = str(raw).lower().replace("quantizationmethod.", "") if raw else _detect_legacy_method(cfg)
    if method == "awq":
        return _awq(cfg, source_file)
    if method == "gptq":
        return _gptq(cfg, source_file)
    if method in ("fp8", "fbgemm_fp8"):
        return _fp8(cfg, method, source_file)
    if method == "bitsandbytes":
        return _bitsandbytes(cfg, source_file)
    if method in ("compressed-tensors", "compressed_tensors", "sparseml"):
        return _compressed_tensors(cfg, source_file)
    return _unknown(cfg, method, source_file)


def quantization_from_source(source: Any) -> QuantInfo | None:
    """parse_quantization on a ModelSource: config.json, then the older separate files, or the GGUF tensors."""
    gguf_info = getattr(source, "gguf_info", None)
    if gguf_info is not None:
        return parse_quantization({}, gguf_info=gguf_info)
    config = source.read_json("config.json") or {}
    if config.get("quantization_config") or config.get("compression_config"):
        return parse_quantization(config)
    for name in ("quantize_config.json", "quant_config.json"):
        extra = source.read_json(name)
        if extra:
            return parse_quantization(config, extra, quantize_config_name=name)
    return parse_quantization(config)


def check_requested_quantization(requested: str | None, info: QuantInfo | None) -> str | None:
    """Validate a --quantization override against the checkpoint; returns the canonical method name."""
    if requested is None:
        return info.method if info else None
    wanted = _ALIASES.get(requested.strip().lower())
    if wanted is None:
        raise UsageError(f"unknown quantization method {requested!r}",
                         hint=f"choose one of: {', '.join(sorted(_ALIASES))}")
    if info is None:
        raise UsageError(f"--quantization {requested} was given, but the checkpoint is not quantized",
                         hint="llmctl does not quantize at load time: drop --quantization, or pick a quantized model")
    if info.method != wanted:
        raise UsageError(f"the checkpoint is quantized with {info.method}, not {requested}",
                         hint=f"drop --quantization or pass --quantization {info.method}")
    return wanted
