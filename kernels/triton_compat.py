"""Triton when it is installed, else a stand-in whose `jit` leaves kernels as plain (never launched) functions."""

from __future__ import annotations

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
