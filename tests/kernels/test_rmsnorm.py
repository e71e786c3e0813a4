"""RMSNorm Triton kernels against their torch references."""

import pytest
import torch
from torch.testing import assert_close

from llmctl.kernels.rmsnorm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref

# Both sides take float32 statistics and round the normalised row to the input dtype once; only the order
# of the float32 sum differs, which can flip that rounding by one ulp: 1e-5 in fp32, one bf16/fp16 ulp
# (relative 2^-8 / 2^-11) in half precision.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}
SHAPES = [(1, 64), (7, 80), (33, 96), (2, 3, 4096), (5, 5120)]


def _residual_tol(device, dtype) -> dict:
    """x + residual is rounded identically on both sides, so the new residual is bit-exact on CUDA; Triton's CPU
    interpreter truncates instead of rounding fp32 -> bf16, one ulp (relative 2^-7) off there."""
    if device.type == "cuda" or dtype != torch.bfloat16:
        return dict(atol=0, rtol=0)
    return dict(atol=0, rtol=2**-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_matches_reference(device, shape, dtype):
    x = torch.randn(shape, device=device).to(dtype) * 3
    weight = torch.randn(shape[-1], device=device).to(dtype)
    expected = rms_norm_ref(x, weight, 1e-6)
    got = rms_norm(x, weight, 1e-6)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64), (33, 96), (7, 4096)])
def test_fused_add_rms_norm_matches_reference_in_place(device, shape, dtype):
    x = torch.randn(shape, device=device).to(dtype)
    residual = torch.randn(shape, device=device).to(dtype)
    weight = torch.randn(shape[-1], device=device).to(dtype)
    expected_out, expected_res = fused_add_rms_norm_ref(x, residual, weight, 1e-5)
    x_buf, res_buf = x.clone(), residual.clone()
    out, new_res = fused_add_rms_norm(x_buf, res_buf, weight, 1e-5)
    assert_close(new_res, expected_res, **_residual_tol(device, dtype))
    assert_close(out, expected_out, **TOL[dtype])
    # in place, as vLLM's kernel: the buffers themselves now hold the results
    assert out.data_ptr() == x_buf.data_ptr() and new_res.data_ptr() == res_buf.data_ptr()


def test_fused_add_rms_norm_mixed_dtypes_and_strides(device):
    """An fp32 weight on bf16 activations promotes the output (no in-place write); strided inputs work."""
    x = torch.randn(9, 2 * 80, device=device).to(torch.bfloat16)[:, ::2]  # non-contiguous (9, 80)
    residual = torch.randn(9, 80, device=device).to(torch.bfloat16)
    weight = torch.randn(80, device=device)
    expected_out, expected_res = fused_add_rms_norm_ref(x, residual, weight, 1e-6)
    out, new_res = fused_add_rms_norm(x.clone(), residual.clone(), weight, 1e-6)
    assert out.dtype == torch.float32
    assert_close(new_res, expected_res, **_residual_tol(device, torch.bfloat16))
    assert_close(out, expected_out, **TOL[torch.bfloat16])


def test_rms_norm_rejects_mismatched_weight(device):
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(2, 64, device=device), torch.ones(32, device=device), 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_gemma_rms_norm_matches_reference(device, shape, dtype):
    """Gemma's variant: (1 + weight) in float32, one rounding at the end; output in x's dtype."""
    from llmctl.kernels.rmsnorm import gemma_rms_norm, gemma_rms_norm_ref

    x = torch.randn(shape, device=device).to(dtype) * 3
    weight = (torch.randn(shape[-1], device=device) * 0.5).to(dtype)
    expected = gemma_rms_norm_ref(x, weight, 1e-6)
    got = gemma_rms_norm(x, weight, 1e-6)
    assert got.dtype == x.dtype == expected.dtype and got.shape == expected.shape
    assert_close(got, expected, **TOL[dtype])
    # the two variants really differ: Llama's norm of the same input is not Gemma's
    assert not torch.allclose(rms_norm_ref(x, weight, 1e-6).float(), expected.float(), atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64), (33, 96), (7, 3072)])
def test_gemma_fused_add_rms_norm_matches_reference(device, shape, dtype):
    from llmctl.kernels.rmsnorm import gemma_fused_add_rms_norm, gemma_fused_add_rms_norm_ref

    x = torch.randn(shape, device=device).to(dtype)
    residual = torch.randn(shape, device=device).to(dtype)
    weight = (torch.randn(shape[-1], device=device) * 0.5).to(dtype)
    expected_out, expected_res = gemma_fused_add_rms_norm_ref(x, residual, weight, 1e-6)
    out, new_res = gemma_fused_add_rms_norm(x.clone(), residual.clone(), weight, 1e-6)
    assert_close(new_res, expected_res, **_residual_tol(device, dtype))
    assert_close(out, expected_out, **TOL[dtype])
