"""Flash-decoding over the paged KV cache: the split-KV decode kernel (rotary and the KV write optionally folded in)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from llmctl.kernels.rotary import _rotated_tile
from llmctl.kernels.triton_compat import pdl_enabled, pdl_launch, pdl_trigger, pdl_wait, tl, triton
from llmctl.kernels.tuning import decode_launch, decode_num_splits


@triton.jit
def _active_splits(seq_len, window, num_splits, USE_WINDOW: tl.constexpr, BLOCK_N: tl.constexpr,
                   MIN_TILES: tl.constexpr):
    """(first key, splits in use): at most num_splits, each with at least MIN_TILES key tiles, and at least one.

    A short context uses fewer splits than the grid holds (the rest exit at once), and one split needs no reduction:
    the grid is sized for the longest context a CUDA graph may meet, the work for the context at hand.
    """
    lo = 0
    if USE_WINDOW:
        lo = tl.maximum(0, seq_len - window)
    tiles = tl.cdiv(seq_len - lo, BLOCK_N)
    return lo, tl.maximum(1, tl.minimum(num_splits, tl.cdiv(tiles, MIN_TILES)))


@triton.jit
def _new_kv(new_k_ptr, new_v_ptr, cache_ptr, cos_sin_ptr, tok, pos, kv_head, half, stride_nkt, stride_nkh, stride_nvt,
            stride_nvh, stride_cos_sin, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IS_NEOX: tl.constexpr):
    """Token tok's new key of kv head kv_head rotated by position pos and its value, (BLOCK_D,) each in the cache's
    dtype: k rounded to its own dtype first, as the reference stores the rotated k before writing the cache."""
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    t = tok.to(tl.int64)
    k_ptrs = new_k_ptr + t * stride_nkt + kv_head * stride_nkh + offs_d
    k = _rotated_tile(k_ptrs, d_mask, offs_d, cos_sin_ptr, pos, stride_cos_sin, half, IS_NEOX)
    v = tl.load(new_v_ptr + t * stride_nvt + kv_head * stride_nvh + offs_d, mask=d_mask, other=0.0)
    return k.to(new_k_ptr.dtype.element_ty).to(cache_ptr.dtype.element_ty), v.to(cache_ptr.dtype.element_ty)


@triton.jit
def _kv_tile(k_ptr, v_ptr, table_ptr, offs_n, n_mask, offs_d, d_mask, kv_head, stride_kb, stride_ks, stride_kh,
             stride_vb, stride_vs, stride_vh, PAGE_SIZE: tl.constexpr):
    """Keys offs_n of one sequence (its block-table row at table_ptr) for kv head kv_head: K transposed
    (BLOCK_D, BLOCK_N) and V (BLOCK_N, BLOCK_D), zero where masked."""
    block = tl.load(table_ptr + offs_n // PAGE_SIZE, mask=n_mask, other=0).to(tl.int64)
    slot = offs_n % PAGE_SIZE
    k_off = block * stride_kb + slot * stride_ks + kv_head * stride_kh
    v_off = block * stride_vb + slot * stride_vs + kv_head * stride_vh
    kt = tl.load(k_ptr + k_off[None, :] + offs_d[:, None], mask=n_mask[None, :] & d_mask[:, None], other=0.0)
    v = tl.load(v_ptr + v_off[:, None] + offs_d[None, :], mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    return kt, v


@triton.jit
def _attend_tile(q, kt, v, offs_n, n_mask, m_i, l_i, acc, scale, softcap, slopes, seq_len, USE_SOFTCAP: tl.constexpr,
                 USE_ALIBI: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    """One key tile into the running softmax (m_i, l_i) and output acc of the query group q (BLOCK_G, BLOCK_D)."""
    if UPCAST:  # the CPU interpreter's bf16 dot is wrong (triton 3.9): multiply in fp32 there
        kt = kt.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q.to(kt.dtype), kt, input_precision=DOT_PREC) * scale  # (BLOCK_G, BLOCK_N)
    if USE_SOFTCAP:
        s = softcap * (2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0)
    if USE_ALIBI:
        s += slopes[:, None] * (offs_n - (seq_len - 1)).to(tl.float32)[None, :]
    s = tl.where(n_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2((s - m_new[:, None]) * 1.4426950408889634)
    alpha = tl.exp2((m_i - m_new) * 1.4426950408889634)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return m_new, l_i, acc


# Per-step sizes are not specialised on (== 1, divisible by 16): no recompiles in the middle of a run.
@triton.jit(do_not_specialize=["num_splits", "window", "stride_bt"])
def _attn_decode_kernel(
    # pointers
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    part_o_ptr,
    part_ml_ptr,
    count_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    alibi_ptr,
    new_k_ptr,
    new_v_ptr,
    pos_ptr,
    slot_ptr,
    cos_sin_ptr,
    # sizes and options
    num_queries_per_kv,
    num_splits,
    scale,
    softcap,
    window,
    half,
    # strides
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
    stride_nkt,
    stride_nkh,
    stride_nvt,
    stride_nvh,
    stride_cos_sin,
    # meta-parameters
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    SPLIT: tl.constexpr,
    MIN_TILES: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_ALIBI: tl.constexpr,
    DOT_PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    ROPE: tl.constexpr,
    IS_NEOX: tl.constexpr,
    PDL: tl.constexpr,
    LATE_TRIGGER: tl.constexpr,
):
    """Flash-decoding, one new token per sequence; grid (num_seqs, num_kv_heads, num_splits).

    Each program takes one kv head's group of query heads (GQA: every K/V tile is loaded once for the whole
    group) over 1/num_splits of the sequence's context. q, o (num_seqs, nh, hd); k/v (num_blocks, PAGE_SIZE,
    nkv, hd). With several splits (SPLIT) the normalised partial outputs go to part_o (num_seqs, nh, num_splits,
    BLOCK_D) and (max, sum) to part_ml (num_seqs, nh, num_splits, 2); each split then counts itself done in
    count (num_seqs, nkv) int32, and the last one to finish merges the partials into o and sets the count back to 0
    (no second kernel: at batch 1 its launch cost as much as the merge). num_splits is a runtime value, so CUDA
    graphs of different batch sizes share one compiled kernel.

    ROPE: q and the new token's k/v (new_k, new_v (num_seqs, nkv, hd)) are not rotated and not in the cache yet.
    Every program rotates its q tile in registers (position pos[token], cos_sin (max_position, 2*half));
    the program whose key range holds position seq_len-1 (one split per sequence and kv head) also rotates its kv
    head's new k, stores k and v at cache slot slot[token] and attends to them from registers (a negative slot is
    padding: nothing written, the cache's row read as it is). q and new_k in memory are left as they were.
    """
    # Without ROPE the new key is in the cache already, written by the kernel just before: wait first. With ROPE this
    # kernel writes it itself, so the step's inputs (query_start_loc ... block tables, written before the step's
    # first kernel) and the older keys can load before the wait, while the kernel before this one finishes.
    pdl_trigger(PDL and not LATE_TRIGGER)
    if not ROPE:
        pdl_wait(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_heads = tl.num_programs(1) * num_queries_per_kv
    q_start = tl.load(query_start_loc_ptr + seq)
    q_end = tl.load(query_start_loc_ptr + seq + 1)
    seq_len = tl.load(seq_lens_ptr + seq)  # issued with the two above: one round trip, not two
    lo, active = _active_splits(seq_len, window, num_splits, USE_WINDOW, BLOCK_N, MIN_TILES)
    if (q_end == q_start) | (split >= active):  # no token, or a split the context does not reach
        if ROPE:
            pdl_wait(PDL)  # before any exit: a PDL kernel must not finish ahead of the ones it follows
        return

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < num_queries_per_kv
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * num_queries_per_kv + offs_g
    qd_mask = g_mask[:, None] & d_mask[None, :]
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len - lo, BLOCK_N), active)
    start = lo + split * tiles_per_split * BLOCK_N
    end = tl.minimum(seq_len, start + tiles_per_split * BLOCK_N)
    if ROPE:
        # The split holding position seq_len - 1 (split 0 for an empty context; the last split may hold no tile at
        # all: 5 tiles over 4 splits of 2) writes the new token's k/v to the cache and takes that key from registers,
        # not back from the cache. A padding token (negative slot) writes nothing and reads the cache as it is.
        pos = tl.load(pos_ptr + q_start).to(tl.int64)
        slot_new = tl.load(slot_ptr + q_start).to(tl.int64)
        last_tile = tl.maximum(tl.cdiv(seq_len - lo, BLOCK_N) - 1, 0)
        fresh = (split == last_tile // tl.maximum(tiles_per_split, 1)) & (slot_new >= 0) & (seq_len > 0)
        end -= fresh.to(tl.int32)  # the new key joins after the loop
    # The first key tile (masked off where the split holds none), ahead of the wait with ROPE.
    offs_n = start + tl.arange(0, BLOCK_N)
    n_mask = offs_n < end
    kt, v = _kv_tile(k_ptr, v_ptr, block_tables_ptr + seq * stride_bt, offs_n, n_mask, offs_d, d_mask, kv_head,
                     stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, PAGE_SIZE)
    if ROPE:
        pdl_wait(PDL)  # q and the new k/v are the previous kernel's output
    pdl_trigger(PDL and LATE_TRIGGER)

    q_ptrs = q_ptr + q_start.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :]
    if ROPE:  # rounded to q's dtype, as the rotated q the reference stores
        q = _rotated_tile(q_ptrs, qd_mask, offs_d, cos_sin_ptr, pos, stride_cos_sin, half, IS_NEOX)
        q = q.to(q_ptr.dtype.element_ty)  # (BLOCK_G, BLOCK_D)
        k_new, v_new = _new_kv(new_k_ptr, new_v_ptr, k_ptr, cos_sin_ptr, q_start, pos, kv_head, half, stride_nkt,
                               stride_nkh, stride_nvt, stride_nvh, stride_cos_sin, HEAD_DIM, BLOCK_D, IS_NEOX)
        if fresh:
            row = (slot_new // PAGE_SIZE) * stride_kb + (slot_new % PAGE_SIZE) * stride_ks + kv_head * stride_kh
            tl.store(k_ptr + row + offs_d, k_new, mask=d_mask)
            row = (slot_new // PAGE_SIZE) * stride_vb + (slot_new % PAGE_SIZE) * stride_vs + kv_head * stride_vh
            tl.store(v_ptr + row + offs_d, v_new, mask=d_mask)
    else:
        q = tl.load(q_ptrs, mask=qd_mask, other=0.0)  # (BLOCK_G, BLOCK_D)
    if USE_ALIBI:
        slopes = tl.load(alibi_ptr + heads, mask=g_mask, other=0.0).to(tl.float32)
    else:
        slopes = tl.zeros([BLOCK_G], tl.float32)

    m_i = tl.full([BLOCK_G], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    m_i, l_i, acc = _attend_tile(q, kt, v, offs_n, n_mask, m_i, l_i, acc, scale, softcap, slopes, seq_len,
                                 USE_SOFTCAP, USE_ALIBI, UPCAST, DOT_PREC)
    for start_n in range(start + BLOCK_N, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        kt, v = _kv_tile(k_ptr, v_ptr, block_tables_ptr + seq * stride_bt, offs_n, n_mask, offs_d, d_mask, kv_head,
                         stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, PAGE_SIZE)
        m_i, l_i, acc = _attend_tile(q, kt, v, offs_n, n_mask, m_i, l_i, acc, scale, softcap, slopes, seq_len,
                                     USE_SOFTCAP, USE_ALIBI, UPCAST, DOT_PREC)
    if ROPE:  # the new token's key and value, as one more key of the loop (exp2(-inf) = 0 where not fresh)
        s_new = tl.sum(q.to(k_new.dtype).to(tl.float32) * k_new.to(tl.float32)[None, :], 1) * scale  # (BLOCK_G,)
        if USE_SOFTCAP:
            s_new = softcap * (2.0 * tl.sigmoid(2.0 * s_new / softcap) - 1.0)
        s_new = tl.where(fresh, s_new, float("-inf"))  # ALiBi adds 0 at the query's own position
        m_new = tl.maximum(m_i, s_new)
        p_new = tl.exp2((s_new - m_new) * 1.4426950408889634)
        alpha = tl.exp2((m_i - m_new) * 1.4426950408889634)
        l_i = l_i * alpha + p_new
        p_v = p_new.to(v_new.dtype).to(tl.float32)[:, None] * v_new.to(tl.float32)[None, :]
        acc = acc * alpha[:, None] + p_v
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    if (not SPLIT) or active == 1:
        o_off = q_start.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=qd_mask)
    else:
        first = (seq.to(tl.int64) * num_heads + heads) * num_splits  # (BLOCK_G,): split 0 of each head
        part = first + split  # layout by grid size
        tl.store(part_o_ptr + part[:, None] * BLOCK_D + offs_d[None, :], out, mask=qd_mask)
        tl.store(part_ml_ptr + part * 2, m_i, mask=g_mask)
        tl.store(part_ml_ptr + part * 2 + 1, l_i, mask=g_mask)
        # Count this split done (release: after every thread's stores); the last one merges (acquire).
        tl.debug_barrier()
        counter = count_ptr + seq * tl.num_programs(1) + kv_head
        done = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if done == active - 1:
            tl.debug_barrier()
            m_run = tl.full([BLOCK_G], -1.0e30, tl.float32)
            w_sum = tl.zeros([BLOCK_G], tl.float32)
            merged = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
            for s in range(0, active):  # running merge of the splits' softmaxes (".cg": not from this SM's L1)
                m_s = tl.load(part_ml_ptr + (first + s) * 2, mask=g_mask, other=-1.0e30, cache_modifier=".cg")
                l_s = tl.load(part_ml_ptr + (first + s) * 2 + 1, mask=g_mask, other=0.0, cache_modifier=".cg")
                o_s = tl.load(part_o_ptr + (first + s)[:, None] * BLOCK_D + offs_d[None, :], mask=qd_mask, other=0.0,
                              cache_modifier=".cg")
                m_new = tl.maximum(m_run, m_s)
                alpha = tl.exp2((m_run - m_new) * 1.4426950408889634)
                w_s = l_s * tl.exp2((m_s - m_new) * 1.4426950408889634)  # this split's share of the softmax mass
                merged = merged * alpha[:, None] + w_s[:, None] * o_s
                w_sum = w_sum * alpha + w_s
                m_run = m_new
            final = merged / tl.where(w_sum == 0.0, 1.0, w_sum)[:, None]
            o_off = q_start.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :]
            tl.store(o_ptr + o_off, final.to(o_ptr.dtype.element_ty), mask=qd_mask)
            tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")  # ready for the next step (and graph replay)


# A split of the context holds at least this many keys (fewer splits for short contexts). 64 (one tile) measured
# faster than 256 at batch 1 on an H100 (Qwen2.5-0.5B 1,058 vs 1,010 tok/s, Llama-3-8B 164 vs 162: 128-256 token
# contexts then spread over 2-4 programs per kv head instead of 1).
MIN_SPLIT_KEYS = 64
# Under PDL the next kernel (the o projection) may launch once every program of this one has started, or only once each
# has passed its wait for the kernel before (LATE_TRIGGER): late from this many query channels (heads x head_dim) on.
# H100, batch-1 decode, one machine: Llama-3-8B (4,096) 180.0 / 179.7 tok/s early, 182.4 late; Qwen2.5-0.5B (896)
# 1,363.8 early, 1,280.7 late.
LATE_TRIGGER_MIN_WIDTH = 4096


_COUNTERS: dict[torch.device, torch.Tensor] = {}  # per device: the splits' done-counts, all 0 between launches


def _split_counters(n: int, device: torch.device) -> torch.Tensor:
    """At least n int32 zeros that stay allocated (CUDA graphs replay kernels that point at them); every launch leaves
    them at 0 again. Grown outside graph capture only (capture warms up each shape first)."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < n:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("decode split counters must grow before CUDA-graph capture (run the shape eagerly first)")
        buf = _COUNTERS[device] = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
    return buf


class DecodeRope(NamedTuple):
    """What the decode kernel needs to rotate q and the new k and write k/v to the cache itself (ROPE).

    k, v (num_seqs, nkv, hd) contiguous in hd: the new tokens' keys and values, not rotated, not in the cache;
    positions, slot_mapping (num_seqs,) contiguous integers; cos_sin_cache (max_position, rotary_dim) contiguous rows.
    """

    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    cos_sin_cache: torch.Tensor
    rotary_dim: int
    is_neox: bool


def decode_paged(q, kv_cache, out, query_start_loc, seq_lens, block_tables, opts: dict, num_splits: int | None = None,
                 min_tiles: int | None = None, rope: DecodeRope | None = None):
    """Launch the split-KV decode kernel (its last split of each sequence and kv head merges the partials).

    num_splits sizes the grid (default: from the block table's capacity); each sequence uses as many of them as its
    context fills with min_tiles key tiles apiece (default: MIN_SPLIT_KEYS keys). rope: the same launch also rotates
    q and the new k and writes the new k/v to the cache (q and rope.k in memory stay as they were).
    """
    num_seqs, num_heads, head_dim = q.shape[0], q.shape[1], q.shape[2]
    page_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    block_d = max(16, triton.next_power_of_2(head_dim))
    cfg = decode_launch(block_d, q.dtype)
    if num_splits is None:  # sized from the block table's capacity: no device sync, so CUDA graphs can capture it
        num_splits = decode_num_splits(num_seqs, num_kv_heads, block_tables.shape[1] * page_size, cfg.block_n, q.device)
    if not 1 <= num_splits <= 64:
        raise ValueError(f"num_splits must be in 1..64, got {num_splits}")
    group = num_heads // num_kv_heads
    min_tiles = max(1, MIN_SPLIT_KEYS // cfg.block_n) if min_tiles is None else min_tiles
    k, v = kv_cache[0], kv_cache[1]
    part_o = part_ml = out
    counts = seq_lens
    if num_splits > 1:
        part_o = torch.empty(num_seqs, num_heads, num_splits, block_d, dtype=torch.float32, device=q.device)
        part_ml = torch.empty(num_seqs, num_heads, num_splits, 2, dtype=torch.float32, device=q.device)
        counts = _split_counters(num_seqs * num_kv_heads, q.device)
    if rope is None:  # without ROPE the kernel reads none of these: any pointer and stride will do
        new_k = new_v = pos = slots = cos_sin = q
        half, new_strides, stride_cos_sin = 0, (0, 0, 0, 0), 0
    else:
        new_k, new_v, pos, slots, cos_sin = rope.k, rope.v, rope.positions, rope.slot_mapping, rope.cos_sin_cache
        half, stride_cos_sin = rope.rotary_dim // 2, cos_sin.stride(0)
        new_strides = (new_k.stride(0), new_k.stride(1), new_v.stride(0), new_v.stride(1))
    pdl = pdl_enabled(q.device)
    _attn_decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k, v, out, part_o, part_ml, counts, query_start_loc, seq_lens, block_tables, opts["alibi"],
        new_k, new_v, pos, slots, cos_sin,
        group, num_splits, opts["scale"], opts["softcap"], opts["window"], half,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), *k.stride()[:3], *v.stride()[:3],
        block_tables.stride(0), *new_strides, stride_cos_sin,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=cfg.block_n,
        PAGE_SIZE=page_size, SPLIT=num_splits > 1, MIN_TILES=min_tiles, **opts["meta"], ROPE=rope is not None,
        IS_NEOX=rope is not None and bool(rope.is_neox), PDL=pdl,
        LATE_TRIGGER=pdl and num_heads * head_dim >= LATE_TRIGGER_MIN_WIDTH, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **pdl_launch(pdl),
    )


def decode_paged_ref(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    logit_softcap: float | None,
    alibi_slopes: torch.Tensor | None,
) -> torch.Tensor:
    """One new token per sequence (decode): the whole batch in one padded gather and two einsums.

    Same function as the per-sequence loop below; padded key slots past a sequence's length are masked.
    q (B, nh, hd) -> (B, nh, hd).
    """
    block_size, num_kv_heads, head_dim = kv_cache.shape[2:]
    batch, num_heads = q.shape[0], q.shape[1]
    group = num_heads // num_kv_heads
    pos = torch.arange(int(seq_lens.max()), device=q.device)  # (L,)
    slots = block_tables[:, pos // block_size].long() * block_size + pos % block_size  # (B, L)
    flat = kv_cache.view(2, -1, num_kv_heads, head_dim)
    k, v = flat[0][slots].float(), flat[1][slots].float()  # (B, L, nkv, hd)
    qg = q.float().view(batch, num_kv_heads, group, head_dim)  # query heads grouped by the kv head they read
    scores = torch.einsum("bkgd,blkd->bkgl", qg, k) * scale  # (B, nkv, g, L)
    if logit_softcap is not None:
        scores = logit_softcap * torch.tanh(scores / logit_softcap)
    rel = pos[None, :] - (seq_lens.long()[:, None] - 1)  # (B, L): key position minus the query's
    if alibi_slopes is not None:
        slopes = alibi_slopes.float().view(num_kv_heads, group)
        scores = scores + slopes[None, :, :, None] * rel[:, None, None, :].float()
    visible = rel <= 0  # also drops the padding past each sequence's end
    if sliding_window is not None:
        visible &= rel > -sliding_window
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    out = torch.einsum("bkgl,blkd->bkgd", torch.softmax(scores, dim=-1), v)
    return out.reshape(batch, num_heads, head_dim).to(q.dtype)
