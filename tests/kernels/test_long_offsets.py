"""Kernels address rows, cache blocks and rotary rows past 2^31 elements, and keep launch grids within CUDA's limits.

Element offsets past int32 need tensors of 8+ GiB. Here they are views of sparse files (only the pages a test touches
take memory), GUARD elements in: a kernel that multiplies a row or block index by its stride in int32 wraps to an
offset in [-2^31, 2^31) and reads the guard's zeros or another row (or writes there) instead of the right element,
so the comparison with the plain-torch reference fails rather than the process. CPU interpreter only (on a GPU the
tensors would have to exist); tests/engine/gpu_long_context.py runs the full-size shapes on CUDA.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmctl.kernels import attention_prefill
from llmctl.kernels.activation import silu_and_mul, silu_and_mul_ref
from llmctl.kernels.argmax import argmax, argmax_ref
from llmctl.kernels.attention import (
    paged_attention,
    paged_attention_ref,
    rope_paged_attention,
    rope_paged_attention_ref,
    varlen_attention,
    varlen_attention_ref,
)
from llmctl.kernels.gemv import linear
from llmctl.kernels.kv_write import write_kv
from llmctl.kernels.rmsnorm import rms_norm, rms_norm_ref
from llmctl.kernels.rotary import apply_rotary, apply_rotary_ref
from llmctl.kernels.rotary_kv import rotary_write_kv, rotary_write_kv_ref
from llmctl.kernels.tuning import AttnLaunch, GemvLaunch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="sparse-file tensors live on the CPU (interpreter)")

GUARD = 1 << 31  # elements before every view: where an offset that wrapped around int32 lands
ROW_STRIDE = (1 << 30) + 8  # row 2 starts at element 2^31 + 16
BLOCKS = (1 << 23) + 4  # a paged cache of 16 x 1 x 16 blocks: block 2^23 + 1 starts at element 2^31 + 256


@pytest.fixture
def far(tmp_path):
    """far(shape, stride=None, dtype) -> a randomly filled view of a sparse file, its elements GUARD in."""
    count = iter(range(100))

    def make(shape, stride=None, dtype=torch.float32) -> torch.Tensor:
        if stride is None:  # contiguous
            stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        extent = 1 + sum((n - 1) * s for n, s in zip(shape, stride))
        path = tmp_path / f"sparse{next(count)}.bin"
        try:
            base = torch.from_file(str(path), shared=True, size=GUARD + extent, dtype=dtype)
        except (OSError, RuntimeError) as exc:
            pytest.skip(f"no sparse file of {GUARD + extent} elements here: {exc}")
        view = base.as_strided(shape, stride, GUARD)
        if math.prod(shape) < 1 << 20:  # fill the rows (a paged cache stays zero: tests write the blocks they use)
            view.copy_(torch.randn(shape).to(dtype))
        return view

    return make


def rows(far, n_rows: int, width: int, dtype=torch.float32) -> torch.Tensor:
    """(n_rows, width) whose row r starts r * ROW_STRIDE elements in."""
    return far((n_rows, width), (ROW_STRIDE, 1), dtype)


def test_rms_norm_rows(far):
    x = rows(far, 3, 96)
    w = torch.randn(96)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6))


def test_act_and_mul_rows(far):
    x = rows(far, 3, 2 * 40)
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x))


def test_gemv_rows_of_input_and_weight(far):
    x, w = rows(far, 3, 64), rows(far, 3, 64)  # up to 8 input rows with an explicit launch
    got = linear(x, w, launch=GemvLaunch(2, 32, 1, 1))
    torch.testing.assert_close(got, F.linear(x, w))


def test_argmax_rows(far):
    x = rows(far, 3, 1000)
    x[2, 777] = 100.0  # row 2, past 2^31 elements: its own maximum, not the guard's zeros or row 0's
    assert argmax(x).tolist() == argmax_ref(x).tolist()


@pytest.mark.parametrize("neox", [True, False])
def test_rotary_rows_and_cos_sin_rows(far, neox):
    q, k = rows(far, 3, 4 * 16), rows(far, 3, 2 * 16)
    cos_sin = rows(far, 3, 16)  # position 2's cos/sin row starts past 2^31 elements
    positions = torch.tensor([2, 0, 2], dtype=torch.int32)  # int32, as any integer tensor may be
    got = apply_rotary(q, k, positions, cos_sin, 16, neox, head_size=16)
    torch.testing.assert_close(got, apply_rotary_ref(q, k, positions, cos_sin, 16, neox, head_size=16))


def test_varlen_attention_rows(far):
    q, k, v = (rows(far, 3, n * 16).view(3, n, 16) for n in (4, 2, 2))
    qsl = torch.tensor([0, 3], dtype=torch.int32)
    torch.testing.assert_close(varlen_attention(q, k, v, qsl, 0.25), varlen_attention_ref(q, k, v, qsl, 0.25))


def _far_cache(far):
    """A (2, BLOCKS, 16, 1, 16) cache and one 40-token sequence on blocks past 2^31 elements (and one not)."""
    cache = far((2, BLOCKS, 16, 1, 16))
    table = torch.tensor([[BLOCKS - 3, 5, BLOCKS - 1]], dtype=torch.int32)
    positions = torch.arange(40, dtype=torch.int32)
    slots = table[0, positions // 16] * 16 + positions % 16  # int32 (all below 2^31): the kernels widen them
    return cache, table, positions, slots


def test_kv_write_and_paged_attention_on_far_blocks(far):
    cache, table, positions, slots = _far_cache(far)
    k, v = torch.randn(40, 1, 16), torch.randn(40, 1, 16)
    write_kv(k, v, cache, slots)
    assert torch.equal(cache[0].view(-1, 1, 16)[slots], k) and torch.equal(cache[1].view(-1, 1, 16)[slots], v)
    seq_lens = torch.tensor([40], dtype=torch.int32)
    q = torch.randn(24, 4, 16)  # the last 24 positions: a chunk after 16 cached ones
    qsl = torch.tensor([0, 24], dtype=torch.int32)
    want = paged_attention_ref(q, cache, qsl, seq_lens, table, 0.25)
    torch.testing.assert_close(paged_attention(q, cache, qsl, seq_lens, table, 0.25), want)
    torch.testing.assert_close(paged_attention(q, cache, qsl, seq_lens, table, 0.25, k=k[16:], v=v[16:]), want)
    one = torch.tensor([0, 1], dtype=torch.int32)  # decode: the last position alone
    torch.testing.assert_close(paged_attention(q[-1:], cache, one, seq_lens, table, 0.25),
                               paged_attention_ref(q[-1:], cache, one, seq_lens, table, 0.25))  # fmt: skip


@pytest.mark.parametrize("decode", [False, True])
def test_rotary_kv_write_and_fused_decode_on_far_blocks(far, decode):
    cache, table, positions, slots = _far_cache(far)
    cos_sin = far((64, 16), (1 << 26, 1))  # the rows of positions 32 and up start past 2^31 elements
    n = 1 if decode else 40
    q, k, v = torch.randn(n, 4, 16), torch.randn(n, 1, 16), torch.randn(n, 1, 16)
    pos, slot = positions[-n:], slots[-n:]
    if decode:  # the other 39 keys first, through the reference
        ctx = torch.randn(39, 1, 16)
        cache[0].view(-1, 1, 16)[slots[:39]] = ctx
        cache[1].view(-1, 1, 16)[slots[:39]] = ctx
        args = (cache, torch.tensor([0, 1], dtype=torch.int32), torch.tensor([40], dtype=torch.int32), table, pos,
                cos_sin, 16, True, slot, 0.25)  # fmt: skip
        got = rope_paged_attention(q.clone(), k.clone(), v, *args)
        written = cache[0].view(-1, 1, 16)[slot].clone()
        want = rope_paged_attention_ref(q.clone(), k.clone(), v, *args)
        torch.testing.assert_close(got, want)
        assert torch.equal(written, cache[0].view(-1, 1, 16)[slot])  # the fused kernel wrote the far slot itself
    else:
        q2, k2 = q.clone(), k.clone()
        rotary_write_kv(pos, q, k, v, cos_sin, 16, True, cache, slot)
        got_k = cache[0].view(-1, 1, 16)[slot].clone()
        rotary_write_kv_ref(pos, q2, k2, v, cos_sin, 16, True, cache, slot)
        torch.testing.assert_close(q, q2)
        torch.testing.assert_close(got_k, cache[0].view(-1, 1, 16)[slot])
        assert torch.equal(cache[1].view(-1, 1, 16)[slot], v)


def test_prefill_grid_stays_within_cuda_limits(monkeypatch):
    """A million-token batch: CUDA caps grid axes y and z at 65,535, so the prefill's tiles go on the x axis."""
    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **kwargs: None

    monkeypatch.setattr(attention_prefill, "_attn_prefill_kernel", Recorder())
    tokens = 16 * 65_536 + 5
    q = torch.zeros(1, 2, 16).expand(tokens, 2, 16)
    kv = torch.zeros(1, 1, 16).expand(tokens, 1, 16)
    qsl = torch.tensor([0, tokens], dtype=torch.int32)
    varlen_attention(q, kv, kv, qsl, 0.25, launch=AttnLaunch(16, 16, 1, 1))
    (grid,) = grids
    assert math.prod(grid) >= 2 * -(-tokens // 16)  # every head of every 16-row tile
    assert grid[0] < 2**31 and all(n <= 65_535 for n in grid[1:])
