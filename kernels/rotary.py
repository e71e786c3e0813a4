"""Rotary position embedding: the plain-torch reference that applies a precomputed cos/sin cache to q and k."""

from __future__ import annotations

import torch

from llmctl.kernels.triton_compat import require_triton, tl, triton


@triton.jit
def _rotate_heads(x_ptr, o_ptr, tok, stride_xt, stride_xh, stride_ot, stride_oh, num_heads, cos, sin,
                  half, IS_NEOX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
    """Rotate the rotary part of every head of one token: x/o rows (num_heads, head_size), cos/sin (BLOCK_R,)."""
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_R)
    mask = (heads[:, None] < num_heads) & (dims[None, :] < half)
    if IS_NEOX:  # pairs (i, i + half)
        off1 = dims
        off2 = dims + half
    else:  # pairs (2i, 2i + 1)
        off1 = 2 * dims
        off2 = 2 * dims + 1
    base_x = x_ptr + tok * stride_xt + heads[:, None] * stride_xh
    base_o = o_ptr + tok * stride_ot + heads[:, None] * stride_oh
    x1 = tl.load(base_x + off1[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base_x + off2[None, :], mask=mask, other=0.0).to(tl.float32)
    c = cos[None, :]
    s = sin[None, :]
    tl.store(base_o + off1[None, :], (x1 * c - x2 * s).to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(base_o + off2[None, :], (x2 * c + x1 * s).to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cos_sin_row(cache_ptr, pos, stride_cache, half, dtype_ptr, BLOCK_R: tl.constexpr):
    """Position pos's cos and sin (BLOCK_R,) from a (max_position, 2*half) cache row, rounded to dtype_ptr's element
    type as the reference does, then float32 for the rotation."""
    dims = tl.arange(0, BLOCK_R)
    cos = tl.load(cache_ptr + pos * stride_cache + dims, mask=dims < half, other=0.0)
    sin = tl.load(cache_ptr + pos * stride_cache + half + dims, mask=dims < half, other=0.0)
    return cos.to(dtype_ptr.dtype.element_ty).to(tl.float32), sin.to(dtype_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _rotated_tile(ptrs, mask, offs_d, cos_sin_ptr, pos, stride_cos_sin, half, IS_NEOX: tl.constexpr):
    """Load the head rows at ptrs (..., BLOCK_D) (dims offs_d (BLOCK_D,) of each head) and return them rotated by
    position pos, float32: the pair formula of _rotate_heads (x1 c - x2 s, x2 c + x1 s) on the whole head at once,
    each dim reading its pair partner from memory. Dims >= 2*half pass through exactly (cos 1, sin 0). cos/sin are
    rounded to the rows' dtype first, as the reference does; round the result to that dtype to match it too."""
    rot = offs_d < 2 * half
    if IS_NEOX:  # pairs (i, i + half)
        first = offs_d < half
        delta = tl.where(first, half, -half)
        col = tl.where(first, offs_d, offs_d - half)
    else:  # pairs (2i, 2i + 1)
        first = offs_d % 2 == 0
        delta = tl.where(first, 1, -1)
        col = offs_d // 2
    x = tl.load(ptrs, mask=mask, other=0.0)
    partner = tl.load(ptrs + delta, mask=mask & rot, other=0.0).to(tl.float32)
    row = cos_sin_ptr + pos * stride_cos_sin
    cos = tl.load(row + col, mask=rot, other=1.0).to(x.dtype).to(tl.float32)
    sin = tl.load(row + half + col, mask=rot, other=0.0).to(x.dtype).to(tl.float32)
    return x.to(tl.float32) * cos - partner * tl.where(first, sin, -sin)


def check_rope(rotary_dim: int, head_size: int, cos_sin_cache: torch.Tensor) -> None:
    """The rotary arguments both Triton rotary ops take: an even rotary_dim within the head, a matching cache."""
    if rotary_dim % 2 or not 0 < rotary_dim <= head_size:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and within head_size {head_size}")
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != rotary_dim or cos_sin_cache.stride(1) != 1:
        raise ValueError(f"cos_sin_cache must be (max_position, {rotary_dim}) with contiguous rows")


@triton.jit
def _rotary_kernel(
    # pointers
    q_ptr,
    k_ptr,
    q_out_ptr,
    k_out_ptr,
    pos_ptr,
    cache_ptr,
    # sizes
    num_q_heads,
    num_k_heads,
    half,
    # strides
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_qot,
    stride_qoh,
    stride_kot,
    stride_koh,
    stride_cache,
    # meta-parameters
    HAS_K: tl.constexpr,
    IS_NEOX: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """One token per program: q (T, nh, hs) and k (T, nkv, hs) -> q_out, k_out, rotating dims [0, 2*half).

    cos_sin_cache (max_position, 2*half) holds cos then sin; its row is rounded to q's dtype first, as the
    reference does, and the rotation itself runs in float32.
    """
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    cos, sin = _cos_sin_row(cache_ptr, pos, stride_cache, half, q_ptr, BLOCK_R)
    _rotate_heads(q_ptr, q_out_ptr, tok, stride_qt, stride_qh, stride_qot, stride_qoh, num_q_heads, cos, sin,
                  half, IS_NEOX, BLOCK_HQ, BLOCK_R)
    if HAS_K:
        _rotate_heads(k_ptr, k_out_ptr, tok, stride_kt, stride_kh, stride_kot, stride_koh, num_k_heads, cos, sin,
                      half, IS_NEOX, BLOCK_HK, BLOCK_R)


def _heads_view(x: torch.Tensor, head_size: int) -> torch.Tensor:
    """(T, n, hs) or (T, n*hs) -> (T, n, hs) with contiguous head dims (a view when possible)."""
    x3 = x.reshape(x.shape[0], -1, head_size)
    return x3 if x3.stride(2) == 1 else x3.contiguous()


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    is_neox_style: bool,
    head_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton apply_rotary_ref: q and k rotated in one kernel; same signature, new tensors back."""
    require_triton()
    hs = head_size if head_size is not None else q.shape[-1]
    check_rope(rotary_dim, hs, cos_sin_cache)
    num_tokens = q.shape[0]
    pos = positions.reshape(-1)
    if pos.numel() != num_tokens or pos.dtype.is_floating_point:
        raise ValueError(f"positions must hold {num_tokens} integers, got {pos.dtype} {tuple(positions.shape)}")
    q3 = _heads_view(q, hs)  # (T, nh, hs)
    k3 = _heads_view(k, hs) if k is not None else None  # (T, nkv, hs)
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device) if k is not None else None
    q_out3 = q_out.view(q3.shape)
    k_out3 = k_out.view(k3.shape) if k is not None else None
    if rotary_dim < hs:  # partial rotary: the tail of each head passes through
        q_out3[..., rotary_dim:] = q3[..., rotary_dim:]
        if k is not None:
            k_out3[..., rotary_dim:] = k3[..., rotary_dim:]
    if num_tokens == 0:
        return q_out, k_out
    half = rotary_dim // 2
    kk = k3 if k is not None else q3
    ko = k_out3 if k is not None else q_out3
    _rotary_kernel[(num_tokens,)](
        q3,
        kk,
        q_out3,
        ko,
        pos.contiguous(),
        cos_sin_cache,
        q3.shape[1],
        kk.shape[1],
        half,
        q3.stride(0),
        q3.stride(1),
        kk.stride(0),
        kk.stride(1),
        q_out3.stride(0),
        q_out3.stride(1),
        ko.stride(0),
        ko.stride(1),
        cos_sin_cache.stride(0),
        HAS_K=k is not None,
        IS_NEOX=is_neox_style,
        BLOCK_HQ=triton.next_power_of_2(q3.shape[1]),
        BLOCK_HK=triton.next_power_of_2(kk.shape[1]),
        BLOCK_R=max(16, triton.next_power_of_2(half)),
        num_warps=4,
    )
    return q_out, k_out


def _rotate(
    x: torch.Tensor,  # (T, n, head_size)
    cos: torch.Tensor,  # (T, 1, rotary_dim // 2)
    sin: torch.Tensor,  # (T, 1, rotary_dim // 2)
    rotary_dim: int,
    is_neox_style: bool,
) -> torch.Tensor:
    """Rotate the first rotary_dim dims of every head; the remaining dims pass through unchanged."""
    x_rot = x[..., :rotary_dim]
    x_pass = x[..., rotary_dim:]
    if is_neox_style:
        # Pairs are (i, i + rotary_dim / 2): the two halves of the rotary part (GPT-NeoX, Llama).
        x1, x2 = x_rot.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        # Pairs are (2i, 2i + 1): interleaved, as in GPT-J.
        x1 = x_rot[..., 0::2]
        x2 = x_rot[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    if x_pass.shape[-1] == 0:
        return out
    return torch.cat((out, x_pass), dim=-1)


def apply_rotary_ref(
    q: torch.Tensor,
    k: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    is_neox_style: bool,
    head_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return q and k rotated by the angles of their token's position.

    q: (T, nh, head_size) or (T, nh * head_size) with head_size given; k likewise with its own head
    count (or None). positions: (T,) int. cos_sin_cache: (max_position, rotary_dim), cos in the first
    half of each row and sin in the second, already multiplied by any attention scaling. The cache
    rows are cast to q's dtype before the rotation, as transformers and vLLM both do, so half-precision
    inputs round the same way they do there. Returns new tensors of the input shapes and dtype.
    """
    cos_sin = cos_sin_cache.index_select(0, positions.reshape(-1).long()).to(q.dtype)  # (T, rotary_dim)
    cos, sin = cos_sin.chunk(2, dim=-1)
    cos = cos.unsqueeze(1)  # (T, 1, rotary_dim // 2)
    sin = sin.unsqueeze(1)

    def apply(x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        hs = head_size if head_size is not None else shape[-1]
        x = x.reshape(shape[0], -1, hs)  # (T, n, head_size)
        return _rotate(x, cos, sin, rotary_dim, is_neox_style).reshape(shape)

    return apply(q), (apply(k) if k is not None else None)
