"""Rotary embedding and the paged KV-cache write in one kernel: rotate q and k in place, store rotated k and v."""

from __future__ import annotations

import math

import torch

from llmctl.kernels.kv_write import write_kv_ref
from llmctl.kernels.rotary import _cos_sin_row, _rotate_heads, apply_rotary_ref, check_rope
from llmctl.kernels.triton_compat import pdl_enabled, pdl_launch, pdl_trigger, pdl_wait, require_triton, tl, triton
from llmctl.kernels.tuning import row_warps


@triton.jit
def _rotary_write_kv_kernel(
    # pointers
    q_ptr,
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    pos_ptr,
    slot_ptr,
    cos_sin_ptr,
    # sizes
    num_q_heads,
    num_kv_heads,
    head_size,
    half,
    # strides
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cos_sin,
    stride_slot,
    # meta-parameters
    IS_NEOX: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):
    """One token per program: q (T, nh, hs) and k (T, nkv, hs) rotated in place over dims [0, 2*half), then
    k and v (T, nkv, hs) stored at cache rows (num_blocks*block_size, nkv, hs) slot_mapping (T,).

    cos_sin (max_position, 2*half) holds cos then sin; its row is rounded to q's dtype and the rotation runs in
    float32, as kernels/rotary.py does. A negative slot is a padding token: its q/k are rotated, nothing is
    written to the cache.
    """
    pdl_trigger(PDL)
    pdl_wait(PDL)
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    cos, sin = _cos_sin_row(cos_sin_ptr, pos, stride_cos_sin, half, q_ptr, BLOCK_R)
    _rotate_heads(q_ptr, q_ptr, tok, stride_qt, stride_qh, stride_qt, stride_qh, num_q_heads, cos, sin,
                  half, IS_NEOX, BLOCK_HQ, BLOCK_R)
    _rotate_heads(k_ptr, k_ptr, tok, stride_kt, stride_kh, stride_kt, stride_kh, num_kv_heads, cos, sin,
                  half, IS_NEOX, BLOCK_HK, BLOCK_R)
    # The cache takes k as stored above (rounded to k's dtype, then cast to the cache's), as the reference does;
    # the barrier makes this program's in-place stores visible to all of its threads before they read k back.
    tl.debug_barrier()
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot >= 0:
        heads = tl.arange(0, BLOCK_HK)
        cols = tl.arange(0, BLOCK_D)
        mask = (heads[:, None] < num_kv_heads) & (cols[None, :] < head_size)
        row = heads[:, None] * head_size + cols[None, :]  # cache rows are packed (nkv, hs)
        k = tl.load(k_ptr + tok * stride_kt + heads[:, None] * stride_kh + cols[None, :], mask=mask)
        v = tl.load(v_ptr + tok * stride_vt + heads[:, None] * stride_vh + cols[None, :], mask=mask)
        tl.store(k_cache_ptr + slot * stride_slot + row, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + slot * stride_slot + row, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def _heads_inplace(x: torch.Tensor, head_size: int, name: str) -> torch.Tensor:
    """(T, n, hs) or (T, n*hs) -> a (T, n, hs) view of the same memory (the kernel writes through it)."""
    if x.dim() not in (2, 3) or math.prod(x.shape[1:]) % head_size:
        raise ValueError(f"{name} {tuple(x.shape)} is not (T, n, {head_size}) or (T, n*{head_size})")
    try:
        x3 = x.view(x.shape[0], -1, head_size)
    except RuntimeError:
        x3 = None
    if x3 is None or x3.stride(2) != 1:
        raise ValueError(f"{name} must be a view with contiguous heads to be rotated in place, strides {x.stride()}")
    return x3


def _check_args(q, k, v, positions, cos_sin_cache, rotary_dim, kv_cache, slot_mapping) -> None:
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or not kv_cache.is_contiguous():
        raise ValueError(f"kv_cache must be a contiguous (2, blocks, block_size, nkv, hd), got {tuple(kv_cache.shape)}")
    num_tokens, head_size = q.shape[0], kv_cache.shape[-1]
    check_rope(rotary_dim, head_size, cos_sin_cache)
    if q.dtype != k.dtype or k.dtype != v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    kv_row = kv_cache.shape[-2] * head_size
    for name, x in (("k", k), ("v", v)):
        if x.shape[0] != num_tokens or x.numel() != num_tokens * kv_row:
            raise ValueError(f"{name} {tuple(x.shape)} does not hold {num_tokens} rows of the cache's {kv_row}")
    for name, x in (("positions", positions), ("slot_mapping", slot_mapping)):
        if x.numel() != num_tokens or x.dtype.is_floating_point:
            raise ValueError(f"{name} must hold {num_tokens} integers, got {x.dtype} {tuple(x.shape)}")


def rotary_write_kv(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    is_neox: bool,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Triton rotary_write_kv_ref: one launch, same in-place results."""
    require_triton()
    _check_args(q, k, v, positions, cos_sin_cache, rotary_dim, kv_cache, slot_mapping)
    num_tokens = q.shape[0]
    if num_tokens == 0:
        return
    num_kv_heads, head_size = kv_cache.shape[-2:]
    q3 = _heads_inplace(q, head_size, "q")  # (T, nh, hs)
    k3 = _heads_inplace(k, head_size, "k")  # (T, nkv, hs)
    v3 = v.reshape(num_tokens, num_kv_heads, head_size)  # read only: a copy is fine
    if v3.stride(2) != 1:
        v3 = v3.contiguous()
    half = rotary_dim // 2
    block_hq = triton.next_power_of_2(q3.shape[1])
    block_hk = triton.next_power_of_2(num_kv_heads)
    block_r = max(16, triton.next_power_of_2(half))
    block_d = max(16, triton.next_power_of_2(head_size))
    pdl = pdl_enabled(q.device)
    _rotary_write_kv_kernel[(num_tokens,)](
        q3,
        k3,
        v3,
        kv_cache[0],
        kv_cache[1],
        positions.reshape(-1).contiguous(),
        slot_mapping.reshape(-1).contiguous(),
        cos_sin_cache,
        q3.shape[1],
        num_kv_heads,
        head_size,
        half,
        q3.stride(0),
        q3.stride(1),
        k3.stride(0),
        k3.stride(1),
        v3.stride(0),
        v3.stride(1),
        cos_sin_cache.stride(0),
        num_kv_heads * head_size,
        IS_NEOX=is_neox,
        BLOCK_HQ=block_hq,
        BLOCK_HK=block_hk,
        BLOCK_R=block_r,
        BLOCK_D=block_d,
        PDL=pdl,
        num_warps=row_warps(max(block_hq * block_r, block_hk * block_d)),
        **pdl_launch(pdl),
    )


def rotary_write_kv_ref(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    is_neox: bool,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """apply_rotary_ref on q and k, written back into them, then write_kv_ref of the rotated k and v.

    q: (T, nh, hd) or (T, nh*hd); k, v: (T, nkv, hd) or (T, nkv*hd), hd = kv_cache.shape[-1]; they may be
    strided views of one fused qkv output. kv_cache: (2, num_blocks, block_size, nkv, hd). slot_mapping (T,):
    flat cache slot per token, negative for padding tokens (rotated, not written). Returns None.
    """
    num_kv_heads, head_size = kv_cache.shape[-2:]
    q_rot, k_rot = apply_rotary_ref(q, k, positions, cos_sin_cache, rotary_dim, is_neox, head_size)
    q.copy_(q_rot)
    k.copy_(k_rot)
    write_kv_ref(
        k_rot.reshape(-1, num_kv_heads, head_size), v.reshape(-1, num_kv_heads, head_size), kv_cache, slot_mapping
    )
