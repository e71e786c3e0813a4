"""The support verdict behind `llmctl check`: registry row + spec + quantization + memory -> reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmctl.core.errors import InvalidValueError
from llmctl.core.values import is_finite_number
from llmctl.core.registry import (
    TRANSFORMERS_VERIFIED,
    ArchInfo,
    lookup,
    nearest_native,
    transformers_backend_blocker,
    transformers_has,
)

GIB = 1024**3
TRANSFORMERS_NOTE = (
    "runs through the transformers backend inside llmctl's engine (llmctl's scheduler, sampler and paged "
    "KV cache, transformers' layers); native kernels are not used for its layers"
)
REMOTE_NOTE = (
    "runs the repo's own model code through the transformers backend inside llmctl's engine, provided that "
    "code routes attention through transformers' AttentionInterface (checked when the model loads)"
)
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "fp8": 1}


@dataclass
class Verdict:
    architecture: str
    supported: bool
    implementation: str  # native | transformers | none
    tasks: list[str]
    needs_trust_remote_code: bool
    level: str
    quantization: dict[str, Any] | None
    reasons: list[str] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # how it runs, when that is not llmctl's own model definition

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "supported": self.supported,
            "implementation": self.implementation,
            "tasks": self.tasks,
            "needs_trust_remote_code": self.needs_trust_remote_code,
            "verification": self.level,
            "quantization": self.quantization,
            "reasons": self.reasons,
            "memory": self.memory,
            "note": self.note,
        }


def max_model_len_problem(max_model_len: Any, positions: int | None) -> str | None:
    """Why a run cannot use `max_model_len` tokens of context on a model of `positions` positions, or None.

    The one rule `check` and the engine (LLM / `generate`) apply, so check never promises what generate refuses.
    """
    if max_model_len is None:
        return None
    if isinstance(max_model_len, bool) or not isinstance(max_model_len, int) or max_model_len < 1:
        raise InvalidValueError(f"max_model_len must be a positive integer, got {max_model_len!r}")
    if positions is not None and max_model_len > positions:
        return f"max_model_len={max_model_len} is more than the model's {positions} positions"
    return None


def needs_remote_code(spec, row: ArchInfo | None) -> bool:
    """Remote code is needed when the repo maps its classes to its own files and llmctl has no native def."""
    if row is not None and row.status == "native":
        return False
    if row is not None and row.needs_remote_code:
        return True
    return bool(spec.config.get("auto_map")) and not transformers_has(spec.architecture)


def verdict(
    spec,
    quant=None,
    *,
    task: str | None = None,
    trust_remote_code: bool = False,
    max_model_len: int | None = None,
    gpu_memory_gib: float | None = None,
    param_count=None,
    kv_bytes_per_token: int | None = None,
) -> Verdict:
    """Decide whether llmctl can run the model, and say why not and what to try."""
    if gpu_memory_gib is not None and (isinstance(gpu_memory_gib, bool) or not is_finite_number(gpu_memory_gib)
                                       or gpu_memory_gib < 0):
        raise InvalidValueError(f"gpu memory must be a finite number of GiB >= 0, got {gpu_memory_gib!r}")
    row = lookup(spec.architecture)
    reasons: list[str] = []
    remote = needs_remote_code(spec, row)
    tasks = list(row.tasks) if row is not None else []

    note = None
    level = row.level if row is not None else "none"
    if row is not None and row.status == "native":
        implementation = "native"
        supported = True
    else:
        blocker = None if remote else transformers_backend_blocker(spec.architecture, spec.model_type, spec.config)
        if (remote and trust_remote_code) or (not remote and blocker is None):
            implementation, supported = "transformers", True
            note = REMOTE_NOTE if remote else TRANSFORMERS_NOTE
            tasks = ["generate"]  # the backend runs text generation only, whatever else a planned row lists
            level = TRANSFORMERS_VERIFIED.get(spec.architecture, "none")
        else:
            implementation, supported = "none", False
            if row is None:
                reasons.append(f"architecture {spec.architecture} is not in llmctl's registry")
            else:
                reasons.append(
                    f"{spec.architecture} is on llmctl's list but its native model definition is not built yet"
                )
            if blocker is not None and transformers_has(spec.architecture):
                reasons.append(f"the transformers backend cannot run it: {blocker}")
            near = nearest_native(spec.architecture)
            if near:
                reasons.append(f"nearest natively supported architecture: {near}")
            if remote:
                reasons.append("this model needs code from its repo: pass --trust-remote-code if you trust it")

    if task is not None and tasks and task not in tasks:
        supported = False
        reasons.append(f"{spec.architecture} supports task(s) {', '.join(tasks)}, not {task}")

    quant_dict = None
    if quant is not None:
        quant_dict = {"method": quant.method, "bits": quant.bits, "supported": quant.supported}
        if not quant.supported:
            supported = False
            reasons.append(f"{quant.method} quantization: {quant.reason or 'not runnable by llmctl yet'}")
        elif implementation == "transformers":
            supported = False
            reasons.append(f"{quant.method} quantization: the transformers backend loads unquantized checkpoints only")

    too_long = max_model_len_problem(max_model_len, spec.max_position_embeddings)
    if too_long is not None:
        supported = False
        reasons.append(f"{too_long}: give a --max-model-len of at most {spec.max_position_embeddings}")
    memory = memory_estimate(spec, quant, max_model_len, gpu_memory_gib, param_count, kv_bytes_per_token)
    if memory.get("fits") is False:
        supported = False  # the user asked about this card: it cannot run there
        reasons.append(
            f"needs about {memory['total_bytes'] / GIB:.1f} GiB (weights + KV cache at {memory['max_model_len']} tokens),"
            f" more than {gpu_memory_gib:g} GiB: try a smaller --max-model-len or a quantized checkpoint"
        )
    return Verdict(
        architecture=spec.architecture,
        supported=supported,
        implementation=implementation,
        tasks=tasks,
        needs_trust_remote_code=remote,
        level=level,
        quantization=quant_dict,
        reasons=reasons,
        memory=memory,
        note=note,
    )


def memory_estimate(spec, quant, max_model_len, gpu_memory_gib, param_count, kv_bytes_per_token) -> dict[str, Any]:
    """Weight bytes as stored (or quantized) and KV-cache bytes for one sequence of max_model_len tokens."""
    from llmctl.core.estimate import weight_bytes

    if param_count is None:
        return {}
    # Quantized weights are counted against bf16; GGUF is dequantised to bf16 on a GPU.
    dtype = (spec.torch_dtype or "bfloat16") if quant is None else "bfloat16"
    weights = weight_bytes(param_count.total, dtype)
    if quant is not None and quant.method != "gguf" and quant.size_vs_bf16:
        # Only the linear layers are quantized: embeddings, lm_head and norms stay 16-bit.
        embeddings = (spec.vocab_size or 0) * (spec.hidden_size or 0) * (1 if spec.tie_word_embeddings else 2)
        linear = max(param_count.total - embeddings, 0)
        weights = weight_bytes(param_count.total - linear, dtype) + int(weight_bytes(linear, dtype) * quant.size_vs_bf16)
    # GGUF weights are dequantised at load: in memory they take the run dtype, as counted above.
    context = max_model_len or spec.max_position_embeddings
    # an unknown per-token KV size (a config llmctl cannot fully read) leaves the cache and the fit unknown
    kv = None if kv_bytes_per_token is None else kv_bytes_per_token * (context or 0)
    memory: dict[str, Any] = {
        "weight_bytes": weights,
        "weight_dtype": dtype if quant is None or quant.method == "gguf" else quant.method,
        "max_model_len": context,
        "kv_cache_bytes_per_token": kv_bytes_per_token,
        "kv_cache_bytes": kv,
        "total_bytes": None if kv is None else weights + kv,
    }
    if gpu_memory_gib is not None:
        memory["gpu_memory_bytes"] = int(gpu_memory_gib * GIB)
        memory["fits"] = None if kv is None else weights + kv <= gpu_memory_gib * GIB
    return memory
