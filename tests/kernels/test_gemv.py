"""Small-M GEMV kernels (linear, rms_norm_linear, act_and_mul_linear) against their torch references."""

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from llmctl.kernels.gemv import (
    GEMV_MAX_M,
    act_and_mul_linear,
    act_and_mul_linear_ref,
    linear,
    linear_ref,
    rms_norm_linear,
    rms_norm_linear_ref,
)
from llmctl.kernels.tuning import GemvLaunch, gemv_heuristic, gemv_launch

DEVICE_IS_CUDA = torch.cuda.is_available()
MS = [1, 2, 3, 8]
SHAPES = [(1, 16), (33, 100), (257, 896), (1000, 1000)]  # (N, K): one row, odd, Qwen-0.5B width, non-powers of two


def _launch(device, n: int, k: int, m: int, late: bool):
    """The tuned launch on CUDA; under the interpreter wide tiles, whose few programs run fastest there. `late`
    picks the kernel's reduction: per K step across lanes, or once after the loop; M=2 runs without the prefetch."""
    prefetch = m != 2  # both ways of streaming the weight tiles
    if device.type == "cuda":
        return dataclasses.replace(gemv_launch(n, k, m, torch.bfloat16), late_reduce=late, prefetch=prefetch)
    return GemvLaunch(64 if n > 64 else 32, 256, 4, 1, late, prefetch)


def _tol(expected: torch.Tensor) -> dict:
    """float32: both sides sum K float32 products in a different order, ~1e-6 relative to the output's scale.
    bf16/fp16: each side rounds the output (and the prologue's intermediate row) to 8 / 11 mantissa bits, and
    Triton's CPU interpreter truncates instead of rounding: two ulps of the output's scale."""
    scale = max(1.0, expected.abs().max().item())
    if expected.dtype == torch.float32:
        return dict(atol=2e-5 * scale, rtol=2e-5)
    return dict(atol=2e-2 * scale, rtol=2e-2)


def _weights(device, dtype, n, k, with_bias):
    weight = (torch.randn(n, k, device=device) / k**0.5).to(dtype)  # outputs O(1)
    bias = torch.randn(n, device=device).to(dtype) if with_bias else None
    return weight, bias


@pytest.mark.parametrize("late", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", MS)
def test_linear_matches_reference(device, m, shape, late):
    n, k = shape
    weight, bias = _weights(device, torch.float32, n, k, with_bias=m % 2 == 1)
    x = torch.randn(m, k, device=device)
    expected = linear_ref(x, weight, bias)
    got = linear(x, weight, bias, launch=_launch(device, n, k, m, late))
    assert got.shape == expected.shape == (m, n) and got.dtype == expected.dtype
    assert_close(got, expected, **_tol(expected))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 8])
def test_linear_half_precision_and_strided_rows(device, m, dtype):
    """Rows with a stride wider than K (a slice of a wider buffer) are read in place."""
    n, k = 257, 100
    weight, bias = _weights(device, dtype, n, k, with_bias=True)
    x = torch.randn(m, 3 * k, device=device).to(dtype)[:, k : 2 * k]  # (m, k), row stride 3k
    expected = linear_ref(x, weight, bias)
    got = linear(x, weight, bias, launch=_launch(device, n, k, m, late=m == 1))
    assert got.dtype == dtype
    assert_close(got, expected, **_tol(expected))


def test_linear_tuned_launch_and_leading_dims(device):
    """The default (tuned or heuristic) launch on a small shape; x (2, 3, K) comes back as (2, 3, N)."""
    weight, bias = _weights(device, torch.float32, 20, 48, with_bias=False)
    x = torch.randn(2, 3, 48, device=device)
    expected = linear_ref(x, weight, bias)
    got = linear(x, weight, bias)
    assert got.shape == (2, 3, 20)
    assert_close(got, expected, **_tol(expected))


def _residual_tol(device, dtype) -> dict:
    """x + residual is rounded once on both sides: exact, except that the CPU interpreter truncates to bf16."""
    if device.type == "cuda" or dtype == torch.float32:
        return dict(atol=0, rtol=0)
    return dict(atol=0, rtol=2**-7)


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("shape", [(1, 16), (33, 100), (257, 896)])
@pytest.mark.parametrize("m", MS)
def test_rms_norm_linear_matches_reference(device, m, shape, with_residual):
    n, k = shape
    weight, bias = _weights(device, torch.float32, n, k, with_bias=with_residual)
    norm_weight = torch.randn(k, device=device)
    x = torch.randn(m, k, device=device) * 3
    residual = torch.randn(m, k, device=device) if with_residual else None
    x_before = x.clone()
    res_before = residual.clone() if with_residual else None
    expected, expected_res = rms_norm_linear_ref(x, residual, norm_weight, 1e-6, weight, bias)
    launch = _launch(device, n, k, m, late=m in (1, 3))
    got, new_res = rms_norm_linear(x, residual, norm_weight, 1e-6, weight, bias, launch=launch)
    assert_close(got, expected, **_tol(expected))
    if with_residual:
        assert_close(new_res, expected_res, atol=0, rtol=0)
        assert new_res.data_ptr() not in (x.data_ptr(), residual.data_ptr())
        assert torch.equal(residual, res_before)
    else:
        assert new_res is None
    assert torch.equal(x, x_before)  # not in place: the caller's tensors are untouched


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("m", [1, 3])
def test_rms_norm_linear_bf16(device, m, with_residual):
    n, k, dtype = 257, 896, torch.bfloat16
    weight, bias = _weights(device, dtype, n, k, with_bias=True)
    norm_weight = torch.randn(k, device=device).to(dtype)
    x = (torch.randn(m, k, device=device) * 3).to(dtype)
    residual = torch.randn(m, k, device=device).to(dtype) if with_residual else None
    expected, expected_res = rms_norm_linear_ref(x, residual, norm_weight, 1e-6, weight, bias)
    launch = _launch(device, n, k, m, late=with_residual)
    got, new_res = rms_norm_linear(x, residual, norm_weight, 1e-6, weight, bias, launch=launch)
    assert got.dtype == dtype
    assert_close(got, expected, **_tol(expected))
    if with_residual:
        assert new_res.dtype == dtype
        assert_close(new_res, expected_res, **_residual_tol(device, dtype))


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("shape", [(1, 16), (33, 100), (257, 896)])
@pytest.mark.parametrize("m", MS)
def test_act_and_mul_linear_matches_reference(device, m, shape, act):
    n, inter = shape
    weight, bias = _weights(device, torch.float32, n, inter, with_bias=m == 3)
    gate_up = torch.randn(m, 2 * inter, device=device) * 2
    before = gate_up.clone()
    expected = act_and_mul_linear_ref(gate_up, weight, bias, act)
    got = act_and_mul_linear(gate_up, weight, bias, act, launch=_launch(device, n, inter, m, late=m in (1, 3)))
    assert got.shape == expected.shape == (m, n)
    assert_close(got, expected, **_tol(expected))
    assert torch.equal(gate_up, before)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_act_and_mul_linear_bf16(device, act):
    n, inter, dtype = 33, 1000, torch.bfloat16
    weight, bias = _weights(device, dtype, n, inter, with_bias=False)
    gate_up = (torch.randn(2, 2 * inter, device=device) * 2).to(dtype)
    expected = act_and_mul_linear_ref(gate_up, weight, bias, act)
    got = act_and_mul_linear(gate_up, weight, bias, act, launch=_launch(device, n, inter, 2, late=act == "silu"))
    assert got.dtype == dtype
    assert_close(got, expected, **_tol(expected))


def test_the_two_activations_differ(device):
    """A kernel that ignored `act` would pass the tests above for one of them only by luck: make sure it can't."""
    weight, _ = _weights(device, torch.float32, 33, 100, with_bias=False)
    gate_up = torch.randn(1, 200, device=device) * 2
    launch = _launch(device, 33, 100, 1, late=False)
    silu = act_and_mul_linear(gate_up, weight, None, "silu", launch=launch)
    gelu = act_and_mul_linear(gate_up, weight, None, "gelu_tanh", launch=launch)
    assert not torch.allclose(silu, gelu, atol=1e-3)


def test_more_rows_than_the_gemv_takes_fall_back_and_match(device):
    """M > GEMV_MAX_M goes to the norm / activation kernels + F.linear; same results, inputs untouched."""
    m, n, k = GEMV_MAX_M + 1, 33, 64
    weight, bias = _weights(device, torch.float32, n, k, with_bias=True)
    x = torch.randn(m, k, device=device)
    residual = torch.randn(m, k, device=device)
    norm_weight = torch.randn(k, device=device)
    x_before, res_before = x.clone(), residual.clone()
    assert_close(linear(x, weight, bias), linear_ref(x, weight, bias))
    for res in (None, residual):
        expected, expected_res = rms_norm_linear_ref(x, res, norm_weight, 1e-5, weight, bias)
        got, new_res = rms_norm_linear(x, res, norm_weight, 1e-5, weight, bias)
        assert_close(got, expected, **_tol(expected))
        if res is None:
            assert new_res is None
        else:
            assert_close(new_res, expected_res, atol=0, rtol=0)
    assert torch.equal(x, x_before) and torch.equal(residual, res_before)
    gate_up = torch.randn(m, 2 * k, device=device)
    for act in ("silu", "gelu_tanh"):
        expected = act_and_mul_linear_ref(gate_up, weight, bias, act)
        assert_close(act_and_mul_linear(gate_up, weight, bias, act), expected, **_tol(expected))


def test_bad_arguments_raise(device):
    weight = torch.randn(8, 16, device=device)
    with pytest.raises(ValueError, match="weight"):
        linear(torch.randn(1, 32, device=device), weight)
    with pytest.raises(ValueError, match="bias"):
        linear(torch.randn(1, 16, device=device), weight, torch.randn(9, device=device))
    with pytest.raises(ValueError, match="activation"):
        act_and_mul_linear(torch.randn(1, 32, device=device), weight, act="relu")
    with pytest.raises(ValueError, match="residual"):
        x = torch.randn(2, 16, device=device)
        rms_norm_linear(x, torch.randn(1, 16, device=device), torch.ones(16, device=device), 1e-6, weight)


@pytest.mark.parametrize("m", [1, 2, 5, 8])
@pytest.mark.parametrize("shape", [(896, 896), (4096, 4096), (151936, 896), (4096, 14336)])
def test_gemv_heuristic_fills_the_gpu_within_the_register_budget(shape, m):
    n, k = shape
    cfg = gemv_heuristic(n, k, m, torch.bfloat16)
    block_m = 1 << (m - 1).bit_length()
    assert cfg.block_k & (cfg.block_k - 1) == 0 and cfg.block_n & (cfg.block_n - 1) == 0
    assert block_m * cfg.block_n * cfg.block_k <= 64 * 32 * cfg.num_warps  # fp32 products per thread <= 64
    programs = -(-n // cfg.block_n)
    assert programs >= 264 or cfg.block_n == 1  # two waves of an H100's SMs where the shape allows it


def test_gemv_launch_prefers_the_table(monkeypatch):
    from llmctl.kernels import tuning

    tabled = GemvLaunch(8, 512, 8, 2)
    norm = dataclasses.replace(tabled, prefetch=not tabled.prefetch)
    monkeypatch.setattr(tuning, "_GEMV", {(4096, 4096, 4, torch.bfloat16, "plain"): tabled,
                                          (4096, 4096, 4, torch.bfloat16, "norm"): norm})  # fmt: skip
    assert gemv_launch(4096, 4096, 3, torch.bfloat16) == tabled  # m=3 runs with BLOCK_M 4
    assert gemv_launch(4096, 4096, 3, torch.bfloat16, "norm") == norm  # the prologue's own entry
    assert gemv_launch(4096, 4096, 3, torch.bfloat16, "act") == tabled  # none: the plain entry
    assert gemv_launch(4096, 4096, 1, torch.bfloat16) == gemv_heuristic(4096, 4096, 1, torch.bfloat16)


def _sweep_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_gemv_sweep.py"
    spec = importlib.util.spec_from_file_location("gpu_gemv_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_sweep_grid_stays_in_the_register_budget(m):
    script = _sweep_script()
    for _, n, k, _ in script.SHAPES:
        grid = script.config_grid(m, k, quick=False)
        assert 10 <= len(grid) <= 40 and len(set(grid)) == len(grid)
        for cfg in grid:
            assert 16 * 32 * cfg.num_warps <= m * cfg.block_n * cfg.block_k <= 64 * 32 * cfg.num_warps
        assert set(script.config_grid(m, k, quick=True)) <= set(grid)


@pytest.mark.skipif(DEVICE_IS_CUDA, reason="the sweep's CPU smoke run; on a GPU run the script itself")
def test_sweep_script_runs_under_the_interpreter(tmp_path, capsys):
    import json

    script = _sweep_script()
    assert script.main(["--tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gemv_sweep.json").read_text())
    rows = data["rows"]
    assert {(r["impl"], r["m"]) for r in rows} >= {("cublas", 1), ("gemv", 1), ("cublas", 2), ("gemv", 2)}
    assert all(r["ms"] > 0 for r in rows)
    assert all(r["max_abs_err"] < 0.1 for r in rows if r["impl"] == "gemv")  # bf16 outputs of O(1)
    assert {"rms_norm_linear", "act_and_mul_linear", "silu_and_mul+F.linear"} <= {r["impl"] for r in rows}
    assert "_GEMV: dict" in capsys.readouterr().out


def test_default_routing_rows_and_norm_prologue_size(device, monkeypatch):
    """Without an explicit launch: GEMV_ROWS or fewer rows take the GEMV, more take cuBLAS; the norm is fused into
    the GEMV only for weights up to NORM_PROLOGUE_MAX_BYTES, else the norm kernel runs first."""
    from llmctl.kernels import gemv

    seen = []
    real = gemv._gemv
    monkeypatch.setattr(gemv, "_gemv", lambda prologue, *a, **kw: seen.append(prologue) or real(prologue, *a, **kw))
    n, k = 33, 64
    weight, bias = _weights(device, torch.float32, n, k, with_bias=True)
    linear(torch.randn(gemv.GEMV_ROWS + 1, k, device=device), weight, bias)
    assert seen == []  # cuBLAS
    x, res, norm_w = (torch.randn(1, k, device=device) for _ in range(3))
    norm_w = norm_w[0]
    expected = rms_norm_linear_ref(x, res, norm_w, 1e-6, weight, bias)
    fused = rms_norm_linear(x, res, norm_w, 1e-6, weight, bias)
    assert seen == [gemv._NORM]
    monkeypatch.setattr(gemv, "NORM_PROLOGUE_MAX_BYTES", weight.numel() * weight.element_size() - 1)
    split = rms_norm_linear(x, res, norm_w, 1e-6, weight, bias)
    assert seen == [gemv._NORM, gemv._PLAIN]
    for got in (fused, split):
        assert_close(got[0], expected[0], **_tol(expected[0]))
        assert_close(got[1], expected[1])
