"""EngineConfig: every setting of an LLM, its default stated once, validated once."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from llmctl.core.errors import InvalidValueError, UnsupportedModelError, UsageError
from llmctl.core.support import max_model_len_problem
from llmctl.core.values import is_finite_number, parse_device, seed_problem

# vLLM options that change nothing here: accepted and dropped.
IGNORED_OPTIONS = frozenset({"swap_space", "disable_log_stats", "tokenizer_mode", "enable_prefix_caching"})
_SIZES = ("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_memory", "num_kv_blocks")
_SET_BY_RESOLVE = frozenset({"shrink_max_model_len"})


def default_max_num_seqs(device: torch.device) -> int:
    """Sequences decoded together unless told: 512 (the largest CUDA-graph bucket) on a GPU of at least 70 GiB, where
    offline runs gain from the larger batch (vLLM's V1 defaults grow on such cards too), else 256."""
    if device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory >= 70 << 30:
        return 512
    return 256


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The settings `LLM(model, **options)` takes (vLLM's names), checked here; None means "decided by resolve()".

    Settings that depend on the device and the model (max_num_seqs, max_num_batched_tokens, max_model_len,
    padded_decode, async_scheduling) are filled in by `resolve`; the KV cache's size (num_kv_blocks, and
    max_model_len lowered to what it holds) by core/engine/kv_cache.py's size_kv_cache.
    """

    model: str | Path  # a local folder, a .gguf file, or anything core/resolve.py resolves (hub ids, aliases)
    tokenizer: str | None = None  # default: the model's
    dtype: str | torch.dtype = "auto"  # auto: the checkpoint's on CUDA; float32 on CPU for bf16/fp16 checkpoints
    device: str | torch.device = "auto"  # auto: cuda when available, else cpu
    seed: int | None = 0
    max_model_len: int | None = None  # default: max_position_embeddings (or 2048), lowered to what the cache holds
    trust_remote_code: bool = False
    quantization: str | None = None  # None, or "gguf" for a .gguf model
    model_impl: str = "auto"  # auto | native | transformers
    task: str = "generate"  # generate | auto | embed | embedding
    load_format: str = "auto"  # auto | dummy (random weights)
    skip_tokenizer_init: bool = False
    revision: str | None = None
    tokenizer_revision: str | None = None  # default: revision
    tensor_parallel_size: int = 1  # llmctl runs on one device
    gpu_memory_utilization: float = 0.9  # the share of the card this process may use (CUDA)
    max_num_seqs: int | None = None  # default: default_max_num_seqs(device)
    max_num_batched_tokens: int | None = None  # default: max(8192 on CUDA / 2048 on CPU, max_num_seqs)
    block_size: int = 16  # tokens per KV cache block
    # Bytes of KV cache on any device; default: 1 GiB on CPU, what gpu_memory_utilization leaves on CUDA; capped at
    # what max_num_seqs sequences of max_model_len need.
    kv_cache_memory: int | None = None
    num_kv_blocks: int | None = None  # fixes the block count, whatever the memory
    enforce_eager: bool = False  # CUDA: run decode steps eagerly instead of replaying CUDA graphs (same tokens)
    padded_decode: bool | None = None  # decode at bucketed batch sizes on static inputs; default: on for CUDA only
    async_scheduling: bool | None = None  # queue decode step n + 1 before reading step n back; default: padded_decode
    shrink_max_model_len: bool = False  # set by resolve() when max_model_len was not given; not an LLM option

    def __post_init__(self):
        if self.task not in ("generate", "auto", "embed", "embedding"):
            raise UnsupportedModelError(f"task={self.task!r} is not available; use 'generate' or 'embed'")
        if self.model_impl not in ("auto", "native", "transformers"):
            raise UnsupportedModelError(
                f"model_impl={self.model_impl!r} is not available; use 'auto', 'native' or 'transformers'"
            )
        if self.tensor_parallel_size != 1:
            raise UsageError("llmctl runs on one device: tensor_parallel_size must be 1")
        for name in _SIZES:  # 1e9 bytes is a fine kv_cache_memory; 2.5 sequences or NaN bytes are not
            value = getattr(self, name)
            if value is None:
                continue
            number = int(value) if is_finite_number(value) and float(value).is_integer() else None
            if number is None or number < 1:
                raise InvalidValueError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, number)  # frozen: the one normalisation, before anyone reads it
        max_model_len_problem(self.max_model_len, None)  # raises for anything but a positive integer or None
        if seed_problem(self.seed) is not None:
            raise InvalidValueError(f"seed {seed_problem(self.seed)}")
        gpu_util = self.gpu_memory_utilization
        if not is_finite_number(gpu_util) or not 0.0 < gpu_util <= 1.0:
            raise UsageError(f"gpu_memory_utilization must be in (0, 1], got {gpu_util}")
        if self.quantization not in (None, "gguf"):
            raise UnsupportedModelError(f"quantization={self.quantization!r} is not supported by llmctl's engine yet")
        if not isinstance(self.device, torch.device):
            parse_device(self.device)  # InvalidValueError for a name llmctl does not run on

    @classmethod
    def from_options(cls, model: str | Path, **options: Any) -> EngineConfig:
        """The config of `LLM(model, **options)`: unknown option names are a UsageError, vLLM's no-ops are dropped."""
        known = {f.name for f in fields(cls)} - _SET_BY_RESOLVE - {"model"}
        unknown = set(options) - known - IGNORED_OPTIONS
        if unknown:
            raise UsageError(f"unknown LLM option(s): {', '.join(sorted(unknown))}")
        return cls(model, **{name: value for name, value in options.items() if name in known})

    def resolve(self, max_positions: int | None = None) -> EngineConfig:
        """This config with the device and every default it and the model fix filled in (idempotent).

        max_positions is the model's max_position_embeddings: max_model_len may not pass it and defaults to it
        (else 2048), with shrink_max_model_len set so the KV cache may lower it. The KV cache's own size is
        size_kv_cache's (core/engine/kv_cache.py), once the model is built.
        """
        from llmctl.core.engine.model_source import resolve_device

        too_long = max_model_len_problem(self.max_model_len, max_positions)  # the rule `llmctl check` applies too
        if too_long is not None:
            raise UsageError(too_long)
        device = resolve_device(self.device)
        max_num_seqs = self.max_num_seqs or default_max_num_seqs(device)
        # CUDA: large packed prefills keep the GPU busy (vLLM's offline default is of this size); CPU: 2048.
        batched = self.max_num_batched_tokens or max(8192 if device.type == "cuda" else 2048, max_num_seqs)
        padded = device.type == "cuda" if self.padded_decode is None else self.padded_decode  # CUDA graphs need it
        overlap = padded if self.async_scheduling is None else self.async_scheduling
        if overlap and not padded:
            raise UsageError("async_scheduling needs padded decode steps (padded_decode=True)")
        return replace(
            self,
            device=device,
            max_model_len=self.max_model_len or max_positions or 2048,
            shrink_max_model_len=self.shrink_max_model_len or self.max_model_len is None,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=batched,
            padded_decode=padded,
            async_scheduling=overlap,
        )
