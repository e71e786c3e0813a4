"""Rotary-embedding Triton kernel against its torch reference."""

import pytest
import torch
from torch.testing import assert_close

from llmctl.kernels.rotary import apply_rotary, apply_rotary_ref

# The reference rounds cos/sin to the input dtype and then does each product in that dtype; the kernel
# rounds cos/sin the same way but keeps the products in float32 and rounds once. fp32: equal to ~1e-6;
# bf16/fp16: within one or two ulps of values of size ~|x| (rtol 2^-7 / 2^-10).
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=3e-2, rtol=1.6e-2),
    torch.float16: dict(atol=4e-3, rtol=2e-3),
}


def _cache(max_pos, rotary_dim, device):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, device=device).float() / rotary_dim))
    angles = torch.arange(max_pos, device=device).float()[:, None] * inv_freq[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1)  # (max_pos, rotary_dim)


@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize(
    "num_tokens,nh,nkv,head_size,rotary_dim",
    [(1, 4, 1, 64, 64), (7, 8, 2, 80, 80), (33, 4, 4, 128, 32), (5, 2, 1, 256, 128), (3, 3, 1, 96, 48)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rotary_matches_reference(device, neox, num_tokens, nh, nkv, head_size, rotary_dim, dtype):
    cache = _cache(4096, rotary_dim, device)
    positions = torch.randint(0, 4096, (num_tokens,), device=device)
    q = torch.randn(num_tokens, nh, head_size, device=device).to(dtype)
    k = torch.randn(num_tokens, nkv, head_size, device=device).to(dtype)
    eq, ek = apply_rotary_ref(q, k, positions, cache, rotary_dim, neox)
    gq, gk = apply_rotary(q, k, positions, cache, rotary_dim, neox)
    assert gq.shape == eq.shape and gq.dtype == eq.dtype
    assert_close(gq, eq, **TOL[dtype])
    assert_close(gk, ek, **TOL[dtype])


@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
def test_rotary_flat_strided_inputs_and_no_k(device, neox):
    """q/k as (T, n*hs) views of a fused qkv output with head_size given; k=None rotates q alone."""
    T, nh, nkv, hs = 6, 4, 2, 64
    qkv = torch.randn(T, (nh + 2 * nkv) * hs, device=device)
    q, k = qkv[:, : nh * hs], qkv[:, nh * hs : (nh + nkv) * hs]
    cache = _cache(64, 48, device)
    positions = torch.arange(T, device=device) * 7
    eq, ek = apply_rotary_ref(q, k, positions, cache, 48, neox, head_size=hs)
    gq, gk = apply_rotary(q, k, positions, cache, 48, neox, head_size=hs)
    assert_close(gq, eq, **TOL[torch.float32])
    assert_close(gk, ek, **TOL[torch.float32])
    gq_alone, none = apply_rotary(q, None, positions, cache, 48, neox, head_size=hs)
    assert none is None
    assert_close(gq_alone, eq, **TOL[torch.float32])
    assert not torch.equal(gq, q)  # it did rotate


def test_rotary_rejects_bad_rotary_dim(device):
    q = torch.randn(2, 2, 64, device=device)
    with pytest.raises(ValueError, match="rotary_dim"):
        apply_rotary(q, q, torch.zeros(2, dtype=torch.long, device=device), _cache(8, 64, device), 63, True)
