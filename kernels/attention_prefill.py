"""Flash-attention prefill over a packed varlen batch (paged context and/or the batch's own k/v), and its launcher."""

from __future__ import annotations

import torch

from llmctl.kernels.triton_compat import tl, triton
from llmctl.kernels.tuning import AttnLaunch, prefill_launch

_LOG2E = 1.4426950408889634  # the prefill softmax runs in base 2: exp(x) = exp2(x * log2(e))


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
def _span(first_pos, last_pos, end, window, CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys below `end` that query rows at positions first_pos..last_pos may see: (lo, full_lo, full_hi, hi).

    [lo, hi) holds every visible key, lo a multiple of BLOCK_N; the BLOCK_N steps in [full_lo, full_hi) hold only
    keys that every row sees (no masking needed), those in [lo, full_lo) and [full_hi, hi) need the mask: for a
    causal tile that is the diagonal (and the last partial step), for a window also its lower edge.
    """
    hi = end
    full_hi = end
    lo = 0
    full_lo = 0
    if CAUSAL:
        hi = tl.minimum(end, last_pos + 1)
        full_hi = tl.minimum(end, first_pos + 1)
    elif USE_WINDOW:
        hi = tl.minimum(end, last_pos + window)
        full_hi = tl.minimum(end, first_pos + window)
    if USE_WINDOW:
        lo = (tl.maximum(0, first_pos - window + 1) // BLOCK_N) * BLOCK_N
        full_lo = tl.maximum(0, last_pos - window + 1)
    full_hi = tl.maximum(lo, (full_hi // BLOCK_N) * BLOCK_N)  # operands are >= 0: // rounds down
    full_lo = tl.maximum(lo, tl.minimum(full_hi, tl.cdiv(full_lo, BLOCK_N) * BLOCK_N))
    return lo, full_lo, full_hi, hi


@triton.jit
def _prefill_tile(
    acc, l_i, m_i, q, q_pos, offs_d, start_n, hi,
    k_ptr, v_ptr, row0, block_tables_ptr, seq, kv_head, qk_scale, softcap2, slope2, window,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr,
    PAGED: tl.constexpr, CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr,
    USE_ALIBI: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """One BLOCK_N step of the online softmax (base 2): keys at positions [start_n, start_n + BLOCK_N) vs the q tile.

    PAGED: key position p is slot p % PAGE_SIZE of block block_tables[seq, p // PAGE_SIZE]; else row row0 + p of
    k/v. q_pos (BLOCK_M,) counts in the same positions. Without MASKED the caller guarantees every key is below
    `hi` and visible to every row. m_i is in base-2 units (qk_scale = scale * log2(e)).
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
        k_off = block * stride_kb + slot * stride_kt + kv_head * stride_kh
        v_off = block * stride_vb + slot * stride_vt + kv_head * stride_vh
    else:
        rows = (row0 + offs_n).to(tl.int64)
        k_off = rows * stride_kt + kv_head * stride_kh
        v_off = rows * stride_vt + kv_head * stride_vh
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
    s = tl.dot(q.to(kt.dtype), kt, input_precision=DOT_PREC)  # (BLOCK_M, BLOCK_N), unscaled q.k
    rel = offs_n[None, :] - q_pos[:, None]  # key position minus query position
    if MASKED:
        visible = n_mask[None, :]
        if CAUSAL:
            visible = visible & (rel <= 0)
        if USE_WINDOW:
            visible = visible & (rel > -window)
            if not CAUSAL:
                visible = visible & (rel < window)
    if USE_SOFTCAP or USE_ALIBI:  # scale first: softcap and slopes act on the scaled logits
        s = s * qk_scale
        if USE_SOFTCAP:
            s = softcap2 * (2.0 * tl.sigmoid(2.0 * s / softcap2) - 1.0)  # softcap2 * tanh(s / softcap2)
        if USE_ALIBI:
            s += slope2 * rel.to(tl.float32)
        if MASKED:
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    else:  # the max of the raw scores (qk_scale > 0), then one multiply-add per score
        if MASKED:
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _attend_span(
    acc, l_i, m_i, q, q_pos, offs_d, lo, full_lo, full_hi, hi,
    k_ptr, v_ptr, row0, block_tables_ptr, seq, kv_head, qk_scale, softcap2, slope2, window,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr,
    PAGED: tl.constexpr, CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr,
    USE_ALIBI: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """Keys [lo, hi) of one source (see _span): masked steps at both edges, unmasked ones in [full_lo, full_hi)."""
    if USE_WINDOW:  # without a window full_lo == lo: no lower edge to mask, and no loop to compile
        for start_n in range(lo, full_lo, BLOCK_N):
            acc, l_i, m_i = _prefill_tile(
                acc, l_i, m_i, q, q_pos, offs_d, start_n, hi,
                k_ptr, v_ptr, row0, block_tables_ptr, seq, kv_head, qk_scale, softcap2, slope2, window,
                stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
                HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, PAGED, CAUSAL, USE_WINDOW, USE_SOFTCAP, USE_ALIBI, True,
                DOT_PREC, UPCAST,
            )
    for start_n in range(full_lo, full_hi, BLOCK_N):
        acc, l_i, m_i = _prefill_tile(
            acc, l_i, m_i, q, q_pos, offs_d, start_n, hi,
            k_ptr, v_ptr, row0, block_tables_ptr, seq, kv_head, qk_scale, softcap2, slope2, window,
            stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
            HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, PAGED, CAUSAL, USE_WINDOW, USE_SOFTCAP, USE_ALIBI, False,
            DOT_PREC, UPCAST,
        )
    for start_n in range(full_hi, hi, BLOCK_N):
        acc, l_i, m_i = _prefill_tile(
            acc, l_i, m_i, q, q_pos, offs_d, start_n, hi,
            k_ptr, v_ptr, row0, block_tables_ptr, seq, kv_head, qk_scale, softcap2, slope2, window,
            stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
            HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, PAGED, CAUSAL, USE_WINDOW, USE_SOFTCAP, USE_ALIBI, True,
            DOT_PREC, UPCAST,
        )
    return acc, l_i, m_i


# Per-step sizes are not specialised on (== 1, divisible by 16): no recompiles in the middle of a run.
@triton.jit(do_not_specialize=["num_seqs", "window", "stride_bt"])
def _attn_prefill_kernel(
    # pointers
    q_ptr,
    k_ptr,
    v_ptr,
    kc_ptr,
    vc_ptr,
    o_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    alibi_ptr,
    # sizes and options
    num_seqs,
    num_heads,
    num_queries_per_kv,
    qk_scale,
    softcap2,
    window,
    # strides (new k/v: token, head; cache halves: block, slot in block, head)
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    stride_bt,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    PAGED: tl.constexpr,
    NEW_KV: tl.constexpr,
    CAUSAL: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_ALIBI: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Flash-attention over a packed varlen batch; grid (num_heads * num_tiles,), num_tiles = T // BLOCK_M + num_seqs.

    One flat axis, heads fastest (program p: head p % num_heads of tile p // num_heads): the launch order of a
    (num_heads, num_tiles) grid, without its 65,535 limit on the second axis (a T of 8.4M at BLOCK_M 128).

    q, o (T, nh, hd); query_start_loc (num_seqs + 1,); sequence i's queries are its last q_len positions.
    PAGED: kc/vc (num_blocks, PAGE_SIZE, nkv, hd) halves of the cache, seq_lens (num_seqs,), block_tables
    (num_seqs, max_blocks): the context before the batch's tokens (all keys without NEW_KV) is read through the
    table. NEW_KV: k/v (T, nkv, hd) packed like q hold the batch's own keys (without PAGED, every sequence starts
    at position 0). Softmax in base 2 and float32: qk_scale = scale * log2(e), softcap2 = softcap * log2(e).
    """
    pid = tl.program_id(0)
    head = pid % num_heads
    tile = tl.num_programs(0) // num_heads - 1 - pid // num_heads  # last tiles first: under CAUSAL they are the longest
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

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # index among the sequence's new tokens
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < q_len
    d_mask = offs_d < HEAD_DIM
    q_rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=m_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # (BLOCK_M, BLOCK_D)
    first = tile * BLOCK_M
    last = tl.minimum(first + BLOCK_M, q_len) - 1
    slope2 = 0.0
    if USE_ALIBI:
        slope2 = tl.load(alibi_ptr + head).to(tl.float32) * 1.4426950408889634

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: fully masked rows then give exp2(-inf) = 0, not NaN
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if PAGED:  # through the block table: the earlier context (NEW_KV) or every key
        end = seq_len
        if NEW_KV:
            end = ctx_len
        lo, full_lo, full_hi, hi = _span(ctx_len + first, ctx_len + last, end, window, CAUSAL, USE_WINDOW, BLOCK_N)
        acc, l_i, m_i = _attend_span(
            acc, l_i, m_i, q, ctx_len + offs_m, offs_d, lo, full_lo, full_hi, hi,
            kc_ptr, vc_ptr, 0, block_tables_ptr, seq, kv_head, qk_scale, softcap2, slope2, window,
            stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, stride_bt,
            HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, True, CAUSAL, USE_WINDOW, USE_SOFTCAP, USE_ALIBI, DOT_PREC, UPCAST,
        )
    if NEW_KV:  # the batch's own keys, contiguous rows: positions counted from ctx_len (masks only see differences)
        lo, full_lo, full_hi, hi = _span(first, last, q_len, window, CAUSAL, USE_WINDOW, BLOCK_N)
        acc, l_i, m_i = _attend_span(
            acc, l_i, m_i, q, offs_m, offs_d, lo, full_lo, full_hi, hi,
            k_ptr, v_ptr, q_start, block_tables_ptr, seq, kv_head, qk_scale, softcap2, slope2, window,
            0, stride_kt, stride_kh, 0, stride_vt, stride_vh, stride_bt,
            HEAD_DIM, BLOCK_D, BLOCK_N, PAGE_SIZE, False, CAUSAL, USE_WINDOW, USE_SOFTCAP, USE_ALIBI, DOT_PREC, UPCAST,
        )
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    tl.store(
        o_ptr + q_rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
        (acc / l_i[:, None]).to(o_ptr.dtype.element_ty),
        mask=m_mask[:, None] & d_mask[None, :],
    )


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    kv_cache: torch.Tensor | None,
    out: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor | None,
    block_tables: torch.Tensor | None,
    causal: bool,
    opts: dict,
    launch: AttnLaunch | None = None,
) -> None:
    """Launch _attn_prefill_kernel into out (T, nh, hd); inputs validated by the caller (attention.py).

    kv_cache (2, blocks, page, nkv, hd) with seq_lens / block_tables: the context before the batch's tokens is read
    through the table (every key when k/v are None). k/v (T, nkv, hd): the batch's own keys. launch overrides the
    tuned tile. opts is attention._options(...).
    """
    num_seqs = query_start_loc.shape[0] - 1
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_d = max(16, triton.next_power_of_2(head_dim))
    cfg = launch if launch is not None else prefill_launch(block_d, q.dtype)
    paged, new_kv = kv_cache is not None, k is not None
    kc, vc = (kv_cache[0], kv_cache[1]) if paged else (k, v)
    if not new_kv:
        k, v = kc, vc  # unused pointers
    cache_strides = (*kc.stride()[:3], *vc.stride()[:3]) if paged else (0,) * 6
    new_strides = (k.stride(0), k.stride(1), v.stride(0), v.stride(1)) if new_kv else (0,) * 4
    grid = (num_heads * (q.shape[0] // cfg.block_m + num_seqs),)
    _attn_prefill_kernel[grid](
        q, k, v, kc, vc, out, query_start_loc,
        seq_lens if paged else query_start_loc,  # unused without PAGED: any pointer will do
        block_tables if paged else query_start_loc,
        opts["alibi"], num_seqs, num_heads, num_heads // k.shape[-2], opts["scale"] * _LOG2E, opts["softcap"] * _LOG2E,
        opts["window"], q.stride(0), q.stride(1), out.stride(0), out.stride(1), *new_strides, *cache_strides,
        block_tables.stride(0) if paged else 0,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        PAGE_SIZE=kv_cache.shape[2] if paged else 1, PAGED=paged, NEW_KV=new_kv, CAUSAL=causal, **opts["meta"],
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


