"""Gated activation Triton kernels against their torch references."""

import pytest
import torch
from torch.testing import assert_close

from llmctl.kernels.activation import gelu_tanh_and_mul, gelu_tanh_and_mul_ref, silu_and_mul, silu_and_mul_ref

# The kernel rounds act(gate) to the input dtype before the product, as torch does; the activation itself
# is computed in float32 by both, with tanh written through a sigmoid in the kernel (a few fp32 ulps), so
# fp32 agrees to ~1e-6 and half precision to one ulp of the result.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}
# exp of large negative gates overflows to inf inside the interpreter's sigmoid; the result (0) is right.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
OPS = [(silu_and_mul, silu_and_mul_ref), (gelu_tanh_and_mul, gelu_tanh_and_mul_ref)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 2), (7, 66), (2, 3, 2 * 80), (4, 2 * 5000)])
@pytest.mark.parametrize("ops", OPS, ids=["silu", "gelu_tanh"])
def test_act_and_mul_matches_reference(device, ops, shape, dtype):
    fast, ref = ops
    x = (torch.randn(shape, device=device) * 4).to(dtype)
    expected = ref(x)
    got = fast(x)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("ops", OPS, ids=["silu", "gelu_tanh"])
def test_act_and_mul_strided_rows(device, ops):
    fast, ref = ops
    x = torch.randn(5, 3 * 96, device=device)[:, : 2 * 96]  # rows of a wider buffer
    assert_close(fast(x), ref(x), **TOL[torch.float32])


def test_act_and_mul_rejects_odd_width(device):
    with pytest.raises(ValueError, match="odd"):
        silu_and_mul(torch.randn(3, 7, device=device))
