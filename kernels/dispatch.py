"""The one place that picks an op's implementation for a device: Triton on CUDA, the torch reference elsewhere."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable

import torch

# op name -> (module under llmctl.kernels, reference function, fast function or None).
# A Triton kernel lands by filling the third field; every caller keeps asking get_op().
# LLMCTL_KERNELS=ref forces the references everywhere (debugging, A/B checks on a GPU).
_OPS: dict[str, tuple[str, str, str | None]] = {
    "rms_norm": ("rmsnorm", "rms_norm_ref", "rms_norm"),
    "fused_add_rms_norm": ("rmsnorm", "fused_add_rms_norm_ref", "fused_add_rms_norm"),
    "gemma_rms_norm": ("rmsnorm", "gemma_rms_norm_ref", "gemma_rms_norm"),
    "gemma_fused_add_rms_norm": ("rmsnorm", "gemma_fused_add_rms_norm_ref", "gemma_fused_add_rms_norm"),
    "silu_and_mul": ("activation", "silu_and_mul_ref", "silu_and_mul"),
    "gelu_tanh_and_mul": ("activation", "gelu_tanh_and_mul_ref", "gelu_tanh_and_mul"),
    "apply_rotary": ("rotary", "apply_rotary_ref", "apply_rotary"),
    "write_kv": ("kv_write", "write_kv_ref", "write_kv"),
    "rotary_write_kv": ("rotary_kv", "rotary_write_kv_ref", "rotary_write_kv"),
    "paged_attention": ("attention", "paged_attention_ref", "paged_attention"),
    "rope_paged_attention": ("attention", "rope_paged_attention_ref", "rope_paged_attention"),
    "varlen_attention": ("attention", "varlen_attention_ref", "varlen_attention"),
    "linear": ("gemv", "linear_ref", "linear"),
    "rms_norm_linear": ("gemv", "rms_norm_linear_ref", "rms_norm_linear"),
    "act_and_mul_linear": ("gemv", "act_and_mul_linear_ref", "act_and_mul_linear"),
    "argmax": ("argmax", "argmax_ref", "argmax"),
}


def available_ops() -> list[str]:
    return sorted(_OPS)


@functools.lru_cache(maxsize=1)
def _has_triton() -> bool:
    from llmctl.kernels.triton_compat import HAS_TRITON

    return HAS_TRITON


def _use_fast() -> bool:
    """False when LLMCTL_KERNELS=ref asks for the references, or triton is missing."""
    if os.environ.get("LLMCTL_KERNELS", "").strip().lower() == "ref":
        return False
    return _has_triton()


@functools.lru_cache(maxsize=None)
def _resolve(name: str, device_type: str, fast_allowed: bool) -> Callable:
    try:
        module_name, ref_name, fast_name = _OPS[name]
    except KeyError:
        raise KeyError(f"unknown kernel op {name!r}; known: {', '.join(available_ops())}") from None
    module = importlib.import_module(f"llmctl.kernels.{module_name}")
    if fast_name is not None and device_type == "cuda" and fast_allowed:
        return getattr(module, fast_name)
    return getattr(module, ref_name)


def get_op(name: str, device: torch.device | str = "cpu") -> Callable:
    """The implementation of op `name` for tensors on `device`."""
    # Called for every layer of every step: keep the common cases free of allocation and imports.
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    if device_type != "cuda":
        return _resolve(name, device_type, False)
    return _resolve(name, device_type, _use_fast())
