"""Programmatic dependent launch: when it is used, and that every kernel launched with it also waits in-kernel."""

import pytest
import torch

from llmctl.kernels import attention_decode, gemv, rmsnorm, rotary_kv, triton_compat
from llmctl.kernels.attention import _options
from llmctl.kernels.attention_decode import DecodeRope


def test_pdl_only_on_hopper_gpus(monkeypatch):
    """PDL needs compiled kernels on sm_90+: never under the CPU interpreter, and LLMCTL_PDL=0 turns it off."""
    assert not triton_compat.pdl_enabled(torch.device("cpu"))
    monkeypatch.setattr(triton_compat, "_cuda_major", lambda index: 9)
    assert triton_compat.pdl_enabled(torch.device("cuda", 0))
    assert triton_compat.pdl_launch(True) == {"launch_pdl": True} and triton_compat.pdl_launch(False) == {}
    monkeypatch.setenv("LLMCTL_PDL", "0")
    assert not triton_compat.pdl_enabled(torch.device("cuda", 0))
    monkeypatch.delenv("LLMCTL_PDL")
    monkeypatch.setattr(triton_compat, "_cuda_major", lambda index: 8)
    assert not triton_compat.pdl_enabled(torch.device("cuda", 0))


class _Recorder:
    """Stands in for a @triton.jit kernel: kernel[grid](*args, **meta) records meta instead of launching."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **meta: self.launches.append(meta)


def _launch_meta(monkeypatch, module, kernel_name, pdl, call):
    """The meta keywords of the one launch call() makes, with pdl_enabled forced to pdl in module."""
    recorder = _Recorder()
    monkeypatch.setattr(module, kernel_name, recorder)
    monkeypatch.setattr(module, "pdl_enabled", lambda device: pdl)
    call()
    assert len(recorder.launches) == 1
    return recorder.launches[0]


def _decode_call():
    q = torch.randn(1, 4, 64)
    kv_cache = torch.randn(2, 2, 16, 2, 64)
    args = (q, kv_cache, torch.empty_like(q), torch.tensor([0, 1], dtype=torch.int32), torch.tensor([5], dtype=torch.int32),
            torch.zeros(1, 2, dtype=torch.int32), _options(q, 0.125, None, None, None))
    rope = DecodeRope(torch.randn(1, 2, 64), torch.randn(1, 2, 64), torch.tensor([4]), torch.tensor([4]),
                      torch.randn(32, 64), 64, True)
    return lambda: attention_decode.decode_paged(*args, num_splits=1, rope=rope)


def _norm_call():
    x = torch.randn(3, 64)
    return lambda: rmsnorm.rms_norm(x, torch.ones(64), 1e-6)


def _rotary_kv_call():
    q, k, v = torch.randn(2, 4, 64), torch.randn(2, 2, 64), torch.randn(2, 2, 64)
    kv_cache = torch.zeros(2, 2, 16, 2, 64)
    return lambda: rotary_kv.rotary_write_kv(torch.tensor([0, 1]), q, k, v, torch.randn(32, 64), 64, True, kv_cache,
                                             torch.tensor([0, 1]))


@pytest.mark.parametrize("pdl", [True, False], ids=["pdl", "plain"])
@pytest.mark.parametrize("module,kernel,make_call", [
    (attention_decode, "_attn_decode_kernel", _decode_call),
    (rmsnorm, "_rms_norm_kernel", _norm_call),
    (rotary_kv, "_rotary_write_kv_kernel", _rotary_kv_call),
], ids=["decode_attention", "rms_norm", "rotary_write_kv"])
def test_kernels_launched_with_pdl_wait_for_their_inputs(monkeypatch, module, kernel, make_call, pdl):
    """A kernel launched with launch_pdl may start before the previous one ends: it must be compiled with PDL (its
    pdl_wait), and a kernel compiled with PDL is launched so."""
    meta = _launch_meta(monkeypatch, module, kernel, pdl, make_call())
    assert meta["PDL"] is pdl
    assert meta.get("launch_pdl", False) is pdl


@pytest.mark.parametrize("pdl", [True, False], ids=["pdl", "plain"])
def test_gemv_lets_the_next_kernel_launch_early_only_below_the_size_limit(monkeypatch, pdl):
    """Every GEMV waits under PDL; only weights under PDL_EARLY_MAX_BYTES trigger the next launch at once and stream
    their first tile before the wait (bandwidth-bound projections above it lost to the early-launched next kernel)."""
    x = torch.randn(1, 64)
    small, big = torch.randn(32, 64), torch.randn(128, 64)
    monkeypatch.setattr(gemv, "PDL_EARLY_MAX_BYTES", 128 * 64 * 4)  # big is exactly at the limit
    launch = gemv.GemvLaunch(16, 64, 4, 1, prefetch=False)
    for weight, early in ((small, True), (big, False)):
        meta = _launch_meta(monkeypatch, gemv, "_gemv_kernel", pdl, lambda: gemv.linear(x, weight, launch=launch))
        assert meta["PDL"] is pdl and meta.get("launch_pdl", False) is pdl
        assert meta["EARLY_TRIGGER"] is (pdl and early)
        assert meta["PREFETCH"] is (pdl and early)  # the launch asked for none: only the early trigger adds it


@pytest.mark.parametrize("pdl", [True, False], ids=["pdl", "plain"])
def test_decode_attention_lets_wide_models_o_projection_launch_only_after_its_wait(monkeypatch, pdl):
    """From LATE_TRIGGER_MIN_WIDTH query channels on, the decode kernel triggers the next launch after its wait for
    the previous kernel, not at its top (measured better for Llama-3-8B, worse for Qwen2.5-0.5B)."""
    call = _decode_call()  # 4 heads x 64 = 256 query channels
    for limit, late in ((256, True), (257, False)):
        monkeypatch.setattr(attention_decode, "LATE_TRIGGER_MIN_WIDTH", limit)
        meta = _launch_meta(monkeypatch, attention_decode, "_attn_decode_kernel", pdl, call)
        assert meta["LATE_TRIGGER"] is (pdl and late)
