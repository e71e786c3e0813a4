"""The dispatch table: Triton on CUDA, references elsewhere and under LLMCTL_KERNELS=ref."""

import pytest

from llmctl.kernels import dispatch
from llmctl.kernels.triton_compat import HAS_TRITON


@pytest.mark.parametrize("name", dispatch.available_ops())
def test_cpu_always_gets_the_reference(name):
    assert dispatch.get_op(name, "cpu").__name__.endswith("_ref")


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("name", dispatch.available_ops())
def test_cuda_gets_the_triton_wrapper_unless_refs_are_forced(name, monkeypatch):
    monkeypatch.delenv("LLMCTL_KERNELS", raising=False)
    fast = dispatch.get_op(name, "cuda")
    assert not fast.__name__.endswith("_ref")
    assert fast.__name__ + "_ref" == dispatch.get_op(name, "cpu").__name__
    monkeypatch.setenv("LLMCTL_KERNELS", "ref")
    assert dispatch.get_op(name, "cuda").__name__.endswith("_ref")


def test_unknown_op_names_the_known_ones():
    with pytest.raises(KeyError, match="rms_norm"):
        dispatch.get_op("no_such_op")
