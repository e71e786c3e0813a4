"""Triton when it is installed, else a stand-in whose `jit` leaves kernels as plain (never launched) functions."""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # the torch references stay importable and usable without triton
    HAS_TRITON = False

    class _NoTriton:
        """Just enough of `triton` for modules to define their kernels at import time."""

        @staticmethod
        def jit(fn=None, **_kwargs):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 << max(0, int(n) - 1).bit_length()

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

    triton = _NoTriton()
    tl = None


def require_triton() -> None:
    """Raise a clear error where a Triton wrapper is called on a machine without triton."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed; use the *_ref implementation (LLMCTL_KERNELS=ref)")


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on `device` launch with programmatic dependent launch (PDL): compiled kernels on Hopper or newer
    (never the CPU interpreter), unless LLMCTL_PDL=0 (for A/B timing).

    A kernel launched so may start while the previous one still runs; it must call pdl_wait before it touches
    anything an earlier kernel writes, and before it can finish, so that kernels after it see every earlier write.
    """
    if device.type != "cuda" or not HAS_TRITON or os.environ.get("LLMCTL_PDL", "1") == "0":
        return False
    return _cuda_major(device.index if device.index is not None else torch.cuda.current_device()) >= 9


@functools.lru_cache(maxsize=None)
def _cuda_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def pdl_launch(enabled: bool) -> dict:
    """The launch keyword of a kernel launched with PDL (none without)."""
    return {"launch_pdl": True} if enabled else {}


if HAS_TRITON:

    @triton.jit
    def pdl_trigger(PDL: tl.constexpr):
        """Let the next kernel (if launched with PDL) start now, ahead of this one's end."""
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def pdl_wait(PDL: tl.constexpr):
        """Wait until the kernels before this one have finished and their writes are visible."""
        if PDL:
            tl.extra.cuda.gdc_wait()

else:
    pdl_trigger = pdl_wait = None
