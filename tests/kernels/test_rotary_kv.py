"""Fused rotary + KV-cache write Triton kernel against its torch reference (apply_rotary_ref, then write_kv_ref)."""

import pytest
import torch
from torch.testing import assert_close

from llmctl.kernels import dispatch
from llmctl.kernels.kv_write import write_kv_ref
from llmctl.kernels.rotary import apply_rotary_ref
from llmctl.kernels.rotary_kv import rotary_write_kv, rotary_write_kv_ref

# The reference does each rotary product in the input dtype, the kernel in float32 with one rounding (as
# kernels/rotary.py's tests explain): fp32 agrees to ~1e-6; bf16 to an ulp or two of values of size ~|x|,
# and the interpreter's fp32 -> bf16 cast truncates where torch rounds (another ulp). v is copied: exact.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=3e-2, rtol=1.6e-2),
}
BLOCK_SIZE = 8


def _cos_sin(max_pos, rotary_dim, device):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, device=device).float() / rotary_dim))
    angles = torch.arange(max_pos, device=device).float()[:, None] * inv_freq[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1)  # (max_pos, rotary_dim)


def _inputs(device, T, nh, nkv, hd, dtype, pad_every=0):
    """q, k, v as strided views of one fused qkv output, positions, slots (some -1) and a random cache."""
    qkv = torch.randn(T, (nh + 2 * nkv) * hd, device=device).to(dtype)  # (T, (nh + 2 nkv) * hd)
    num_blocks = T // BLOCK_SIZE + 2
    slots = torch.randperm(num_blocks * BLOCK_SIZE, device=device)[:T]
    if pad_every:
        slots[::pad_every] = -1
    positions = torch.randint(0, 512, (T,), device=device)
    cache = torch.randn(2, num_blocks, BLOCK_SIZE, nkv, hd, device=device).to(dtype)
    return qkv, positions, slots, cache


def _split(qkv, nh, nkv, hd):
    q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)  # (T, n*hd) views, row stride (nh + 2 nkv) * hd
    return q, k, v


@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize(
    "T,nh,nkv,hd,rotary_dim,pad_every",
    [
        (1, 4, 4, 64, 64, 0),  # decode, MHA
        (3, 8, 2, 128, 128, 2),  # GQA 4, a padding row
        (17, 8, 1, 64, 32, 4),  # GQA 8, partial rotary
        (3, 4, 1, 80, 80, 0),  # head dim 80 (not a power of two)
        (17, 4, 4, 96, 48, 5),  # head dim 96, partial
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_write_kv_matches_reference(device, neox, T, nh, nkv, hd, rotary_dim, pad_every, dtype):
    qkv, positions, slots, cache = _inputs(device, T, nh, nkv, hd, dtype, pad_every)
    cos_sin = _cos_sin(512, rotary_dim, device)
    original_qkv, original_cache = qkv.clone(), cache.clone()
    qkv_ref, cache_ref = qkv.clone(), cache.clone()

    rotary_write_kv_ref(positions, *_split(qkv_ref, nh, nkv, hd), cos_sin, rotary_dim, neox, cache_ref, slots)
    rotary_write_kv(positions, *_split(qkv, nh, nkv, hd), cos_sin, rotary_dim, neox, cache, slots)

    q, k, v = _split(qkv, nh, nkv, hd)
    q_ref, k_ref, _ = _split(qkv_ref, nh, nkv, hd)
    assert_close(q, q_ref, **TOL[dtype])
    assert_close(k, k_ref, **TOL[dtype])
    assert torch.equal(v, _split(original_qkv, nh, nkv, hd)[2])  # v is only read
    assert_close(cache, cache_ref, **TOL[dtype])  # the whole cache: written rows and untouched ones
    assert torch.equal(cache[1].view(-1, nkv, hd)[slots[slots >= 0]], v.reshape(T, nkv, hd)[slots >= 0])
    untouched = torch.ones(cache.shape[1] * BLOCK_SIZE, dtype=torch.bool, device=device)
    untouched[slots[slots >= 0]] = False  # rows of other tokens and of padding tokens
    rows = cache.view(2, -1, nkv, hd)
    assert torch.equal(rows[:, untouched], original_cache.view(2, -1, nkv, hd)[:, untouched])


@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
def test_reference_is_apply_rotary_then_write_kv(device, neox):
    """The ref against its definition: rotated q/k as apply_rotary_ref returns them, the cache as write_kv_ref
    leaves it with the rotated k; the pass-through tail of each head (partial rotary) is left as it was."""
    T, nh, nkv, hd, rotary_dim = 5, 4, 2, 64, 32
    qkv, positions, slots, cache = _inputs(device, T, nh, nkv, hd, torch.float32, pad_every=3)
    cos_sin = _cos_sin(512, rotary_dim, device)
    q0, k0, v0 = (x.clone() for x in _split(qkv, nh, nkv, hd))
    expected_q, expected_k = apply_rotary_ref(q0, k0, positions, cos_sin, rotary_dim, neox, head_size=hd)
    expected_cache = cache.clone()
    write_kv_ref(expected_k.view(T, nkv, hd), v0.view(T, nkv, hd), expected_cache, slots)

    q, k, v = _split(qkv, nh, nkv, hd)
    rotary_write_kv_ref(positions, q, k, v, cos_sin, rotary_dim, neox, cache, slots)
    assert torch.equal(q, expected_q) and torch.equal(k, expected_k)
    assert torch.equal(cache, expected_cache)
    assert not torch.equal(q, q0)  # it did rotate, in place through the views
    assert torch.equal(q.view(T, nh, hd)[..., rotary_dim:], q0.view(T, nh, hd)[..., rotary_dim:])


def test_rotary_write_kv_head_dim_256_and_3d_inputs(device):
    """(T, n, hd) inputs, head dim 256, int32 slots: one more layout the attention layer may pass."""
    T, nh, nkv, hd = 3, 2, 1, 256
    q = torch.randn(T, nh, hd, device=device)
    k = torch.randn(T, nkv, hd, device=device)
    v = torch.randn(T, nkv, hd, device=device)
    cos_sin = _cos_sin(64, hd, device)
    positions = torch.tensor([0, 5, 63], device=device)
    slots = torch.tensor([9, -1, 0], device=device, dtype=torch.int32)
    cache = torch.zeros(2, 2, BLOCK_SIZE, nkv, hd, device=device)
    q_ref, k_ref, cache_ref = q.clone(), k.clone(), cache.clone()
    rotary_write_kv_ref(positions, q_ref, k_ref, v, cos_sin, hd, True, cache_ref, slots)
    rotary_write_kv(positions, q, k, v, cos_sin, hd, True, cache, slots)
    assert_close(q, q_ref, **TOL[torch.float32])
    assert_close(k, k_ref, **TOL[torch.float32])
    assert_close(cache, cache_ref, **TOL[torch.float32])
    assert cache[0].view(-1, nkv, hd)[9].abs().sum() > 0


def test_rotary_write_kv_rejects_bad_arguments(device):
    T, nh, nkv, hd = 2, 2, 1, 64
    q = torch.randn(T, nh, hd, device=device)
    k, v = torch.randn(2, T, nkv, hd, device=device)
    cache = torch.zeros(2, 1, BLOCK_SIZE, nkv, hd, device=device)
    pos = torch.zeros(T, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="rotary_dim"):
        rotary_write_kv(pos, q, k, v, _cos_sin(8, 64, device), 63, True, cache, pos)
    with pytest.raises(ValueError, match="does not hold"):
        rotary_write_kv(pos, q, q, v, _cos_sin(8, 64, device), 64, True, cache, pos)
    with pytest.raises(ValueError, match="in place"):  # a transposed q cannot be rotated in place
        rotary_write_kv(pos, q.transpose(1, 2).contiguous().transpose(1, 2), k, v, _cos_sin(8, 64, device), 64,
                        True, cache, pos)


def test_dispatch_has_the_op():
    assert dispatch.get_op("rotary_write_kv", "cpu") is rotary_write_kv_ref


@pytest.mark.parametrize("with_cache", [True, False], ids=["paged", "no_cache"])
def test_attention_layer_with_rope_equals_rotating_first(with_cache):
    """Attention.forward(..., rope=, positions=) gives what rotating q/k first and calling it without rope gives,
    with a KV cache (the fused op) and without one (rope applied, then varlen attention)."""
    from llmctl.model_defs.layers.attention import Attention
    from llmctl.model_defs.layers.context import AttentionMetadata, ForwardContext
    from llmctl.model_defs.layers.rotary import get_rope

    T, nh, nkv, hd = 6, 4, 2, 64
    rope = get_rope(hd, hd // 2, 64, 10000.0, None, is_neox_style=False)
    attn = Attention(nh, hd, hd**-0.5, nkv, layer_idx=0)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, 2, T], dtype=torch.int32),
        seq_lens=torch.tensor([2, 4], dtype=torch.int32),
        slot_mapping=torch.tensor([8, 9, 0, 1, 2, 3]),
        block_tables=torch.tensor([[1], [0]], dtype=torch.int32),
        max_query_len=4,
        max_seq_len=4,
    )
    positions = torch.tensor([0, 1, 0, 1, 2, 3])

    def ctx():
        return ForwardContext(meta, [torch.zeros(2, 2, BLOCK_SIZE, nkv, hd)] if with_cache else None)

    qkv = torch.randn(T, (nh + 2 * nkv) * hd)
    q, k, v = _split(qkv.clone(), nh, nkv, hd)
    q_rot, k_rot = rope(positions, q, k)
    plain_ctx, rope_ctx = ctx(), ctx()
    expected = attn(q_rot, k_rot, v, plain_ctx)
    got = attn(*_split(qkv.clone(), nh, nkv, hd), rope_ctx, rope=rope, positions=positions)
    assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(attn(q, k, v, ctx()), expected, atol=1e-3)  # the rotation matters here
    if with_cache:
        assert torch.equal(rope_ctx.kv_caches[0], plain_ctx.kv_caches[0])
