"""Kernel tests: CUDA when present, else the CPU through Triton's interpreter (switched on before triton loads)."""

import os
import sys

import torch  # importing torch does not import triton, so the switch below still comes first

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# triton decorates its own library functions (tl.sum, tl.sigmoid, ...) when it is imported: imported before the
# switch above (a test module collected earlier importing llmctl.kernels.*), it cannot interpret any kernel.
_TRITON_TOO_EARLY = (
    not torch.cuda.is_available() and "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") == "1"
)
if _TRITON_TOO_EARLY:
    from triton.runtime.interpreter import InterpretedFunction
    import triton.language.standard as _standard

    _TRITON_TOO_EARLY = not isinstance(_standard.sum, InterpretedFunction)

import pytest  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    if _TRITON_TOO_EARLY:
        pytest.fail("triton was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1; export it for CPU runs")
    torch.manual_seed(0)
