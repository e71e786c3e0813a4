"""Varlen attention over a packed batch, with and without the paged KV cache: Triton kernels and torch references.

The prefill kernel lives here; the split-KV decode kernel is in attention_decode.py.
"""

from __future__ import annotations

import torch

from llmctl.kernels.attention_decode import decode_paged, decode_paged_ref
from llmctl.kernels.triton_compat import require_triton, tl, triton
from llmctl.kernels.tuning import prefill_launch


@triton.jit
def _find_seq(query_start_loc_ptr, tile, num_seqs, BLOCK_M: tl.constexpr):
    """The sequence owning query tile `tile`: sequence i's tiles are numbered from query_start_loc[i] // BLOCK_M + i."""
    lo = tl.program_id(0) * 0
    hi = lo + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first = tl.load(query_start_loc_ptr + mid) // BLOCK_M + mid
        if first <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _prefill_tile(
    acc, l_i, m_i, q, q_pos, m_mask, offs_d, start_n, hi, seq, q_start, kv_head,
    k_ptr, v_ptr, block_tables_ptr, slope, scale, softcap, window,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr,
    PAGED: tl.constexpr, CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr,
    USE_ALIBI: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """One BLOCK_N step of the online softmax: keys [start_n, start_n + BLOCK_N) against the q tile.

    Without MASKED the caller guarantees every key is below `hi` and visible to every row.
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    n_mask = offs_n < hi
    if PAGED:
        if MASKED:
            block = tl.load(block_tables_ptr + seq * stride_bt + offs_n // PAGE_SIZE, mask=n_mask, other=0)
        else:
            block = tl.load(block_tables_ptr + seq * stride_bt + offs_n // PAGE_SIZE)
        block = block.to(tl.int64)
        slot = offs_n % PAGE_SIZE
        k_off = block * stride_kb + slot * stride_ks + kv_head * stride_kh
        v_off = block * stride_vb + slot * stride_vs + kv_head * stride_vh
    else:
        rows = (q_start + offs_n).to(tl.int64)
        k_off = rows * stride_ks + kv_head * stride_kh
        v_off = rows * stride_vs + kv_head * stride_vh
    d_mask = offs_d < HEAD_DIM
    if MASKED:
        kt = tl.load(k_ptr + k_off[None, :] + offs_d[:, None], mask=n_mask[None, :] & d_mask[:, None], other=0.0)
        v = tl.load(v_ptr + v_off[:, None] + offs_d[None, :], mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    elif BLOCK_D == HEAD_DIM:
        kt = tl.load(k_ptr + k_off[None, :] + offs_d[:, None])  # (BLOCK_D, BLOCK_N)
        v = tl.load(v_ptr + v_off[:, None] + offs_d[None, :])  # (BLOCK_N, BLOCK_D)
    else:
        kt = tl.load(k_ptr + k_off[None, :] + offs_d[:, None], mask=d_mask[:, None], other=0.0)
        v = tl.load(v_ptr + v_off[:, None] + offs_d[None, :], mask=d_mask[None, :], other=0.0)
    if UPCAST:  # the CPU interpreter's bf16 dot is wrong (triton 3.9): multiply in fp32 there
        kt = kt.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q.to(kt.dtype), kt, input_precision=DOT_PREC) * scale  # (BLOCK_M, BLOCK_N)
    if USE_SOFTCAP:
        s = softcap * (2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0)  # softcap * tanh(s / softcap)
    rel = offs_n[None, :] - q_pos[:, None]  # key position minus query position
    if USE_ALIBI:
        s += slope * rel.to(tl.float32)
    if MASKED:
        visible = n_mask[None, :] & m_mask[:, None]
        if CAUSAL:
            visible = visible & (rel <= 0)
        if USE_WINDOW:
            visible = visible & (rel > -window)
            if not CAUSAL:
                visible = visible & (rel < window)
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2((s - m_new[:, None]) * 1.4426950408889634)
    alpha = tl.exp2((m_i - m_new) * 1.4426950408889634)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_new


# Per-step sizes are not specialised on (== 1, divisible by 16): no recompiles in the middle of a run.
@triton.jit(do_not_specialize=["num_seqs", "window", "stride_bt"])
def _attn_prefill_kernel(
    # pointers
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    alibi_ptr,
    # sizes and options
    num_seqs,
    num_queries_per_kv,
    scale,
    softcap,
    window,
    # strides (k/v: block, slot in block, head; without PAGED the token stride is the slot stride)
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    PAGED: tl.constexpr,
    CAUSAL: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_ALIBI: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Flash-attention over a packed varlen batch; grid (T // BLOCK_M + num_seqs, num_heads).

    q, o (T, nh, hd); query_start_loc (num_seqs + 1,). PAGED: k/v (num_blocks, PAGE_SIZE, nkv, hd) halves of the
    cache, seq_lens (num_seqs,), block_tables (num_seqs, max_blocks); sequence i's queries are its last
    q_len positions, so earlier context (chunked prefill, decode rows) is read from the cache. Not PAGED: k/v
    (T, nkv, hd) packed like q, each sequence starting at position 0. Online softmax in float32.
    """
    tile = tl.program_id(0)
    head = tl.program_id(1)
    seq = _find_seq(query_start_loc_ptr, tile, num_seqs, BLOCK_M)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    tile = tile - (q_start // BLOCK_M + seq)  # tile index inside the sequence
    if tile * BLOCK_M >= q_len:
        return
    if PAGED:
        seq_len = tl.load(seq_lens_ptr + seq)
    else:
        seq_len = q_len
    ctx_len = seq_len - q_len  # positions already in the cache before this batch's tokens
    kv_head = head // num_queries_per_kv

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < q_len
    d_mask = offs_d < HEAD_DIM
    q_rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=m_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # (BLOCK_M, BLOCK_D)
    q_pos = ctx_len + offs_m
    first_pos = ctx_len + tile * BLOCK_M
    last_pos = ctx_len + tl.minimum((tile + 1) * BLOCK_M, q_len) - 1
    hi = seq_len
    if CAUSAL:
        hi = tl.minimum(hi, last_pos + 1)
    elif USE_WINDOW:
        hi = tl.minimum(hi, last_pos + window)
    lo = 0
    if USE_WINDOW:
        lo = (tl.maximum(0, first_pos - window + 1) // BLOCK_N) * BLOCK_N
    slope = 0.0
    if USE_ALIBI:
        slope = tl.load(alibi_ptr + head).to(tl.float32)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: fully masked tiles then give exp(-inf) = 0, not NaN
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Keys below `mid` are visible to every row of the tile (no window): those tiles skip the masking work.
    mid = lo
    if not USE_WINDOW:
        if CAUSAL:
            mid = ((first_pos + 1) // BLOCK_N) * BLOCK_N
        else:
            mid = (seq_len // BLOCK_N) * BLOCK_N
    for start_n in range(lo, mid, BLOCK_N):
        acc, l_i, m_i = _prefill_tile(
            acc, l_i, m_i, q, q_pos, m_mask, offs_d, start_n, hi, seq, q_start, kv_head,
            k_ptr, v_ptr, block_tables_ptr, slope, scale, softcap, window,
            stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
            HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, PAGED, CAUSAL, USE_WINDOW, USE_SOFTCAP, USE_ALIBI, False,
            DOT_PREC, UPCAST,
        )
    for start_n in range(mid, hi, BLOCK_N):
        acc, l_i, m_i = _prefill_tile(
            acc, l_i, m_i, q, q_pos, m_mask, offs_d, start_n, hi, seq, q_start, kv_head,
            k_ptr, v_ptr, block_tables_ptr, slope, scale, softcap, window,
            stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
            HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, PAGED, CAUSAL, USE_WINDOW, USE_SOFTCAP, USE_ALIBI, True,
            DOT_PREC, UPCAST,
        )
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    tl.store(
        o_ptr + q_rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
        (acc / l_i[:, None]).to(o_ptr.dtype.element_ty),
        mask=m_mask[:, None] & d_mask[None, :],
    )


def _options(q: torch.Tensor, scale, sliding_window, logit_softcap, alibi_slopes) -> dict:
    """Kernel arguments shared by all attention kernels, validated."""
    if alibi_slopes is not None and alibi_slopes.shape != (q.shape[1],):
        raise ValueError(f"alibi_slopes must be ({q.shape[1]},), got {tuple(alibi_slopes.shape)}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be positive, got {sliding_window}")
    return dict(
        alibi=alibi_slopes.float().contiguous() if alibi_slopes is not None else q,
        scale=float(scale),
        softcap=float(logit_softcap) if logit_softcap is not None else 0.0,
        window=int(sliding_window) if sliding_window is not None else 0,
        meta=dict(  # constexpr meta-parameters shared by the prefill and decode kernels
            USE_WINDOW=sliding_window is not None,
            USE_SOFTCAP=logit_softcap is not None,
            USE_ALIBI=alibi_slopes is not None,
            DOT_PREC="ieee" if q.dtype == torch.float32 or q.device.type != "cuda" else "tf32",  # fp32: no tf32
            UPCAST=q.device.type != "cuda",  # off CUDA the kernels run in Triton's interpreter
        ),
    )


def _check_qkv(q: torch.Tensor, k: torch.Tensor, name: str) -> None:
    require_triton()
    if q.dim() != 3 or q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError(f"q must be (T, nh, hd) and q/{name} contiguous in head_dim")
    if q.dtype != k.dtype or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"q {q.dtype} and {name} {k.dtype} must share one of float32/float16/bfloat16")
    if k.shape[-1] != q.shape[-1] or q.shape[1] % k.shape[-2]:
        raise ValueError(f"q {tuple(q.shape)} does not fit {name} {tuple(k.shape)} (head_dim, GQA ratio)")


def _prefill(q, k, v, out, query_start_loc, seq_lens, block_tables, page_size: int, causal: bool, opts: dict):
    """Launch _attn_prefill_kernel; k/v are (blocks, page, nkv, hd) when block_tables is given, else (T, nkv, hd)."""
    num_seqs = query_start_loc.shape[0] - 1
    head_dim = q.shape[2]
    block_d = max(16, triton.next_power_of_2(head_dim))
    cfg = prefill_launch(block_d, q.dtype)
    paged = block_tables is not None
    ks = k.stride() if paged else (0, *k.stride())
    vs = v.stride() if paged else (0, *v.stride())
    grid = (q.shape[0] // cfg.block_m + num_seqs, q.shape[1])
    _attn_prefill_kernel[grid](
        q, k, v, out, query_start_loc,
        seq_lens if paged else query_start_loc,  # unused without PAGED: any pointer will do
        block_tables if paged else query_start_loc,
        opts["alibi"], num_seqs, q.shape[1] // k.shape[-2], opts["scale"], opts["softcap"], opts["window"],
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), ks[0], ks[1], ks[2], vs[0], vs[1], vs[2],
        block_tables.stride(0) if paged else 0,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PAGE_SIZE=page_size,
        PAGED=paged, CAUSAL=causal, **opts["meta"], num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Triton varlen_attention_ref: the prefill kernel reading k/v straight from the packed batch."""
    _check_qkv(q, k, "k")
    _check_qkv(q, v, "v")
    if k.shape[0] != q.shape[0] or v.shape != k.shape:
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} must hold q's {q.shape[0]} tokens")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if q.shape[0] == 0:
        return out
    opts = _options(q, scale, sliding_window, logit_softcap, alibi_slopes)
    _prefill(q, k, v, out, query_start_loc.contiguous(), None, None, 1, causal, opts)
    return out


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Triton paged_attention_ref: the decode kernel when max_query_len is 1, else the prefill kernel.

    max_query_len == 1 is read without a device sync as "one query row per sequence" (T == num_seqs), which
    holds for every batch the scheduler builds (no sequence in a batch has zero new tokens).
    """
    _check_qkv(q, kv_cache, "kv_cache")
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2:
        raise ValueError(f"kv_cache must be (2, num_blocks, block_size, nkv, hd), got {tuple(kv_cache.shape)}")
    if block_tables.dim() != 2 or block_tables.stride(1) != 1:
        raise ValueError("block_tables must be a (num_seqs, max_blocks) tensor with contiguous rows")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if q.shape[0] == 0:
        return out
    opts = _options(q, scale, sliding_window, logit_softcap, alibi_slopes)
    query_start_loc, seq_lens = query_start_loc.contiguous(), seq_lens.contiguous()
    if q.shape[0] == seq_lens.shape[0]:
        decode_paged(q, kv_cache, out, query_start_loc, seq_lens, block_tables, opts)
    else:
        _prefill(q, kv_cache[0], kv_cache[1], out, query_start_loc, seq_lens, block_tables, kv_cache.shape[2], causal,
                 opts)
    return out


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    logit_softcap: float | None,
    alibi_slopes: torch.Tensor | None,
    causal: bool,
) -> torch.Tensor:
    """One sequence: q (Tq, nh, hd) at positions q_pos (Tq,), k/v (Tk, nkv, hd) at k_pos (Tk,) -> (Tq, nh, hd)."""
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    if num_heads != num_kv_heads:  # GQA / MQA: each kv head serves a group of query heads
        k = k.repeat_interleave(num_heads // num_kv_heads, dim=1)
        v = v.repeat_interleave(num_heads // num_kv_heads, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale  # (nh, Tq, Tk)
    if logit_softcap is not None:
        scores = logit_softcap * torch.tanh(scores / logit_softcap)
    rel = k_pos[None, :] - q_pos[:, None]  # (Tq, Tk): key position minus query position
    if alibi_slopes is not None:
        scores = scores + alibi_slopes.float()[:, None, None] * rel[None].float()
    visible = torch.ones_like(rel, dtype=torch.bool)
    if causal:
        visible &= rel <= 0
    if sliding_window is not None:  # a query at p sees keys in (p - window, p] (and [p, p + window) if bidirectional)
        visible &= rel > -sliding_window
        if not causal:
            visible &= rel < sliding_window
    scores = scores.masked_fill(~visible[None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("hqk,khd->qhd", probs, v.float())  # (Tq, nh, hd)
    return out.to(q.dtype)


def varlen_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Attention within each sequence of a packed batch, no cache; q (T, nh, hd), k/v (T, nkv, hd) -> (T, nh, hd).

    Sequence i is rows query_start_loc[i]:query_start_loc[i+1] and starts at position 0.
    """
    out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    for start, end in zip(starts[:-1], starts[1:]):
        if end == start:
            continue
        pos = torch.arange(end - start, device=q.device)
        out[start:end] = _attend(
            q[start:end], k[start:end], v[start:end], pos, pos, scale, sliding_window, logit_softcap, alibi_slopes, causal
        )
    return out


def paged_attention_ref(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Attention of a packed batch's new tokens over each sequence's whole context in the paged cache.

    q (T, nh, hd); kv_cache (2, num_blocks, block_size, nkv, hd) already holding the new tokens' k/v;
    sequence i owns q rows query_start_loc[i]:query_start_loc[i+1], its last seq_lens[i] - 1 position
    being the newest, and its context lives in blocks block_tables[i]. Mixed prefill + decode batches
    and chunked prefill are the same case here. Returns (T, nh, hd).
    """
    block_size, num_kv_heads, head_dim = kv_cache.shape[2:]
    if q.shape[0] == seq_lens.shape[0] and bool((query_start_loc.diff() == 1).all()):
        return decode_paged_ref(q, kv_cache, seq_lens, block_tables, scale, sliding_window, logit_softcap, alibi_slopes)
    out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        start, end = starts[i], starts[i + 1]
        if end == start:
            continue
        num_blocks = -(-seq_len // block_size)
        blocks = block_tables[i, :num_blocks].long()
        k = kv_cache[0, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]  # (seq_len, nkv, hd)
        v = kv_cache[1, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]
        k_pos = torch.arange(seq_len, device=q.device)
        q_pos = k_pos[seq_len - (end - start) :]
        out[start:end] = _attend(
            q[start:end], k, v, q_pos, k_pos, scale, sliding_window, logit_softcap, alibi_slopes, causal
        )
    return out
