"""The plain-torch kernel references (attention, kv write, rmsnorm, gated activations) and the dispatch table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmctl.kernels.activation import gelu_tanh_and_mul_ref, silu_and_mul_ref
from llmctl.kernels.attention import paged_attention_ref, varlen_attention_ref
from llmctl.kernels.dispatch import available_ops, get_op
from llmctl.kernels.kv_write import write_kv_ref
from llmctl.kernels.rmsnorm import fused_add_rms_norm_ref, rms_norm_ref

# float32 on CPU; einsum vs SDPA differ only in summation order.
TOL = dict(atol=1e-5, rtol=1e-5)


def _sdpa(q, k, v, scale, window=None, causal=True, alibi=None):
    """Independent per-sequence reference through F.scaled_dot_product_attention with an explicit mask."""
    n, nh, _ = q.shape
    group = nh // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    allowed = torch.ones(n, n, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if window is not None:
        allowed &= (i - j).abs() < window
    bias = torch.zeros(nh, n, n).masked_fill(~allowed, float("-inf"))
    if alibi is not None:
        bias = bias + alibi[:, None, None] * (j - i)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), bias, scale=scale)
    return out.transpose(0, 1)


def _packed(lens, nh, nkv, hd, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lens)
    q, k, v = (torch.randn(total, h, hd, generator=g) for h in (nh, nkv, nkv))
    loc = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, loc


@pytest.mark.parametrize("nh,nkv,hd", [(4, 4, 16), (6, 2, 8), (4, 1, 33)])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("causal", [True, False])
def test_varlen_attention_matches_sdpa(nh, nkv, hd, window, causal):
    lens = [1, 7, 33, 5]
    q, k, v, loc = _packed(lens, nh, nkv, hd)
    alibi = torch.linspace(0.1, 0.9, nh)
    for slopes in (None, alibi):
        out = varlen_attention_ref(q, k, v, loc, 0.3, sliding_window=window, alibi_slopes=slopes, causal=causal)
        for s, e in zip(loc[:-1].tolist(), loc[1:].tolist()):
            expected = _sdpa(q[s:e], k[s:e], v[s:e], 0.3, window, causal, slopes)
            torch.testing.assert_close(out[s:e], expected, **TOL)


def test_logit_softcap():
    q, k, v, loc = _packed([6], 2, 2, 8)
    out = varlen_attention_ref(q, k, v, loc, 0.5, logit_softcap=2.0)
    scores = torch.einsum("qhd,khd->hqk", q, k) * 0.5
    scores = 2.0 * torch.tanh(scores / 2.0)
    scores = scores.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    expected = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    torch.testing.assert_close(out, expected, **TOL)


def _paged_cache(num_blocks, block_size, nkv, hd):
    return torch.zeros(2, num_blocks, block_size, nkv, hd)


@pytest.mark.parametrize("block_size", [1, 3, 16])
@pytest.mark.parametrize("window", [None, 5])
def test_paged_attention_mixed_batch_equals_full_attention(block_size, window):
    """Contexts written in shuffled blocks, then a batch mixing a prefill, a chunk and a decode."""
    nh, nkv, hd = 4, 2, 8
    full = [9, 20, 13]  # final context lengths
    new = [9, 6, 1]  # new tokens this step: whole prefill, a chunk after 14 cached, one decode token
    q_all, k_all, v_all, _ = _packed(full, nh, nkv, hd, seed=1)
    starts = [0, 9, 29]
    num_blocks = sum(-(-n // block_size) for n in full) + 3
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(2)).tolist()
    tables, slots_all = [], []
    for n in full:
        blocks = [order.pop() for _ in range(-(-n // block_size))]
        tables.append(blocks)
        slots_all.append([blocks[p // block_size] * block_size + p % block_size for p in range(n)])
    cache = _paged_cache(num_blocks, block_size, nkv, hd)
    # earlier steps: everything but the new tokens is already cached
    for i, (n, m) in enumerate(zip(full, new)):
        rows = slice(starts[i], starts[i] + n - m)
        write_kv_ref(k_all[rows], v_all[rows], cache, torch.tensor(slots_all[i][: n - m]))
    rows = [torch.arange(starts[i] + n - m, starts[i] + n) for i, (n, m) in enumerate(zip(full, new))]
    rows = torch.cat(rows)
    slots = torch.tensor([s for i, (n, m) in enumerate(zip(full, new)) for s in slots_all[i][n - m :]])
    write_kv_ref(k_all[rows], v_all[rows], cache, slots)
    width = max(map(len, tables))
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    loc = torch.tensor([0, 9, 15, 16], dtype=torch.int32)
    out = paged_attention_ref(q_all[rows], cache, loc, torch.tensor(full), block_tables, 0.4, sliding_window=window)
    for i, (n, m) in enumerate(zip(full, new)):
        seq = slice(starts[i], starts[i] + n)
        expected = _sdpa(q_all[seq], k_all[seq], v_all[seq], 0.4, window)[n - m :]
        torch.testing.assert_close(out[loc[i] : loc[i + 1]], expected, **TOL)


def test_write_kv_skips_negative_slots():
    cache = _paged_cache(2, 2, 1, 3)
    k = torch.arange(9, dtype=torch.float32).view(3, 1, 3)
    write_kv_ref(k, -k, cache, torch.tensor([3, -1, 0]))
    flat_k = cache[0].view(-1, 1, 3)
    assert torch.equal(flat_k[3], k[0]) and torch.equal(flat_k[0], k[2])
    assert torch.equal(cache[1].view(-1, 1, 3)[3], -k[0])
    assert not flat_k[1].any() and not flat_k[2].any()


def test_rms_norm_matches_transformers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    hf = LlamaRMSNorm(33, eps=1e-5)
    with torch.no_grad():
        hf.weight.normal_()
    x = torch.randn(5, 33)
    torch.testing.assert_close(rms_norm_ref(x, hf.weight.detach(), 1e-5), hf(x).detach(), **TOL)
    r = torch.randn(5, 33)
    out, new_residual = fused_add_rms_norm_ref(x, r, hf.weight.detach(), 1e-5)
    torch.testing.assert_close(new_residual, x + r, **TOL)
    torch.testing.assert_close(out, hf(x + r).detach(), **TOL)
    half = fused_add_rms_norm_ref(x.bfloat16(), r.bfloat16(), hf.weight.detach().bfloat16(), 1e-5)
    assert half[0].dtype == half[1].dtype == torch.bfloat16


def test_gated_activations():
    x = torch.randn(4, 2 * 7)
    gate, up = x[:, :7], x[:, 7:]
    torch.testing.assert_close(silu_and_mul_ref(x), gate * torch.sigmoid(gate) * up, **TOL)
    tanh_gelu = 0.5 * gate * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (gate + 0.044715 * gate**3)))
    torch.testing.assert_close(gelu_tanh_and_mul_ref(x), tanh_gelu * up, **TOL)


def test_dispatch_returns_the_references(monkeypatch):
    assert get_op("rms_norm", "cpu") is rms_norm_ref
    assert get_op("paged_attention", torch.device("cpu")) is paged_attention_ref
    monkeypatch.setenv("LLMCTL_KERNELS", "ref")  # forces the references on CUDA too
    assert get_op("silu_and_mul", "cuda") is silu_and_mul_ref
    assert {"write_kv", "varlen_attention", "apply_rotary"} <= set(available_ops())
    for name in available_ops():
        assert callable(get_op(name, "cpu"))
    with pytest.raises(KeyError, match="unknown kernel op"):
        get_op("no_such_op")
