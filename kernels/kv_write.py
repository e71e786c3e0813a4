"""Scatter the new tokens' keys and values into the paged KV cache: torch reference."""

from __future__ import annotations

import torch

from llmctl.kernels.triton_compat import require_triton, tl, triton
from llmctl.kernels.tuning import row_block, row_warps


@triton.jit
def _write_kv_kernel(
    # pointers
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    # sizes
    row_size,
    # strides
    stride_k,
    stride_v,
    stride_slot,
    # meta-parameters
    BLOCK: tl.constexpr,
):
    """One token per program. k, v (T, nkv*hd) rows -> cache rows (num_blocks*block_size, nkv*hd) at slot_mapping (T,).

    A negative slot is a padding token: nothing is written.
    """
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot >= 0:
        start = tl.program_id(1) * BLOCK
        cols = start + tl.arange(0, BLOCK)
        mask = cols < row_size
        k = tl.load(k_ptr + tok * stride_k + cols, mask=mask)
        v = tl.load(v_ptr + tok * stride_v + cols, mask=mask)
        tl.store(k_cache_ptr + slot * stride_slot + cols, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + slot * stride_slot + cols, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """(T, nkv, hd) -> a (T, nkv*hd) view with contiguous rows (a copy only if the heads are not packed)."""
    if x.dim() != 3:
        raise ValueError(f"{name} must be (T, nkv, hd), got {tuple(x.shape)}")
    if x.stride(2) != 1 or x.stride(1) != x.shape[2]:
        x = x.contiguous()
    return x.as_strided((x.shape[0], x.shape[1] * x.shape[2]), (x.stride(0), 1))


def write_kv(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Triton write_kv_ref: same signature, same in-place scatter into the paged cache."""
    require_triton()
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or not kv_cache.is_contiguous():
        raise ValueError(f"kv_cache must be a contiguous (2, blocks, block_size, nkv, hd), got {tuple(kv_cache.shape)}")
    if k.shape != v.shape or tuple(k.shape[1:]) != tuple(kv_cache.shape[-2:]):
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} do not match the cache {tuple(kv_cache.shape)}")
    if slot_mapping.shape != (k.shape[0],) or slot_mapping.dtype.is_floating_point:
        got = f"{slot_mapping.dtype} {tuple(slot_mapping.shape)}"
        raise ValueError(f"slot_mapping must be integer ({k.shape[0]},), got {got}")
    num_tokens = k.shape[0]
    if num_tokens == 0:
        return
    k2d, v2d = _rows(k, "k"), _rows(v, "v")
    row_size = k2d.shape[1]
    block = min(row_block(row_size), 2048)
    grid = (num_tokens, triton.cdiv(row_size, block))
    _write_kv_kernel[grid](
        k2d,
        v2d,
        kv_cache[0],
        kv_cache[1],
        slot_mapping.contiguous(),
        row_size,
        k2d.stride(0),
        v2d.stride(0),
        row_size,
        BLOCK=block,
        num_warps=row_warps(block),
    )


def write_kv_ref(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write k, v (T, nkv, hd) into kv_cache (2, num_blocks, block_size, nkv, hd) at flat slots.

    slot_mapping (T,) holds block * block_size + offset for each token; a negative slot marks a
    padding token that is not written.
    """
    num_kv_heads, head_dim = kv_cache.shape[-2:]
    k_flat = kv_cache[0].view(-1, num_kv_heads, head_dim)  # (num_blocks * block_size, nkv, hd)
    v_flat = kv_cache[1].view(-1, num_kv_heads, head_dim)
    slots = slot_mapping.long()
    keep = slots >= 0
    if not bool(keep.all()):
        slots, k, v = slots[keep], k[keep], v[keep]
    k_flat.index_copy_(0, slots, k.to(kv_cache.dtype))
    v_flat.index_copy_(0, slots, v.to(kv_cache.dtype))
