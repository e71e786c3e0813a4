"""Varlen attention over a packed batch, with and without the paged KV cache: Triton wrappers and torch references.

The prefill kernel is in attention_prefill.py, the split-KV decode kernel in attention_decode.py. rope_paged_attention
adds rotary and the KV-cache write in front of paged attention (one kernel at decode).
"""

from __future__ import annotations

import torch

from llmctl.kernels.attention_decode import DecodeRope, decode_paged, decode_paged_ref
from llmctl.kernels.attention_prefill import prefill_attention
from llmctl.kernels.rotary_kv import _check_args, rotary_write_kv, rotary_write_kv_ref
from llmctl.kernels.triton_compat import require_triton
from llmctl.kernels.tuning import AttnLaunch


def _options(q: torch.Tensor, scale, sliding_window, logit_softcap, alibi_slopes) -> dict:
    """Kernel arguments shared by all attention kernels, validated."""
    if alibi_slopes is not None and alibi_slopes.shape != (q.shape[1],):
        raise ValueError(f"alibi_slopes must be ({q.shape[1]},), got {tuple(alibi_slopes.shape)}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be positive, got {sliding_window}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
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


def _check_new_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_shape: tuple[int, int]) -> None:
    """k/v must be the batch's (T, nkv, hd) keys and values, matching q and kv_shape (nkv, hd)."""
    _check_qkv(q, k, "k")
    _check_qkv(q, v, "v")
    if k.shape != (q.shape[0], *kv_shape) or v.shape != k.shape:
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} must be ({q.shape[0]}, {kv_shape[0]}, "
                         f"{kv_shape[1]}): q's tokens, the cache's kv heads and head_dim")


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
    launch: AttnLaunch | None = None,
) -> torch.Tensor:
    """Triton varlen_attention_ref: the prefill kernel reading k/v straight from the packed batch.

    launch overrides the tuned tile (kernels/tuning.py) for sweeps.
    """
    _check_new_kv(q, k, v, tuple(k.shape[1:]))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if q.shape[0] == 0:
        return out
    opts = _options(q, scale, sliding_window, logit_softcap, alibi_slopes)
    prefill_attention(q, k, v, None, out, query_start_loc.contiguous(), None, None, causal, opts, launch)
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
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    launch: AttnLaunch | None = None,
) -> torch.Tensor:
    """Triton paged_attention_ref: the decode kernel when max_query_len is 1, else the prefill kernel.

    k/v (T, nkv, hd), optional: the batch's new keys and values, already written to the cache. Given them, the
    prefill kernel reads each sequence's new positions from these contiguous rows and only the earlier context
    through the block table (a fresh prompt touches no table at all); the decode kernel reads the cache either way.
    launch overrides the prefill kernel's tuned tile (kernels/tuning.py) for sweeps.
    max_query_len == 1 is read without a device sync as "one query row per sequence" (T == num_seqs), which
    holds for every batch the scheduler builds (no sequence in a batch has zero new tokens).
    """
    return _paged_attention(q, kv_cache, query_start_loc, seq_lens, block_tables, scale, sliding_window, logit_softcap,
                            alibi_slopes, causal, k, v, launch)


def _paged_attention(q, kv_cache, query_start_loc, seq_lens, block_tables, scale, sliding_window, logit_softcap,
                     alibi_slopes, causal, k, v, launch, rope: DecodeRope | None = None) -> torch.Tensor:
    """paged_attention's checks and launch; rope (decode batches only) has the decode kernel rotate and write the new
    k/v itself (rope_paged_attention)."""
    _check_qkv(q, kv_cache, "kv_cache")
    if rope is not None:
        _check_args(q, k, v, rope.positions, rope.cos_sin_cache, rope.rotary_dim, kv_cache, rope.slot_mapping)
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2:
        raise ValueError(f"kv_cache must be (2, num_blocks, block_size, nkv, hd), got {tuple(kv_cache.shape)}")
    if block_tables.dim() != 2 or block_tables.stride(1) != 1:
        raise ValueError("block_tables must be a (num_seqs, max_blocks) tensor with contiguous rows")
    if (k is None) != (v is None):
        raise ValueError("pass both k and v (the batch's new keys and values) or neither")
    if k is not None:
        _check_new_kv(q, k, v, tuple(kv_cache.shape[3:]))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if q.shape[0] == 0:
        return out
    opts = _options(q, scale, sliding_window, logit_softcap, alibi_slopes)
    query_start_loc, seq_lens = query_start_loc.contiguous(), seq_lens.contiguous()
    if q.shape[0] == seq_lens.shape[0]:
        decode_paged(q, kv_cache, out, query_start_loc, seq_lens, block_tables, opts, rope=rope)
    else:
        prefill_attention(q, k, v, kv_cache, out, query_start_loc, seq_lens, block_tables, causal, opts, launch)
    return out


def rope_paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    is_neox: bool,
    slot_mapping: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Triton rope_paged_attention_ref. Decode (T == num_seqs, read as paged_attention reads it): one launch of the
    decode kernel that rotates q in registers and, per sequence and kv head, rotates the new k, writes k/v to the
    cache and attends to them from registers; q and k are left unrotated. Otherwise rotary_write_kv (q/k rotated in
    place), then paged_attention. slot_mapping[i] must be the cache slot of sequence i's position seq_lens[i] - 1 (as
    the scheduler builds it): the fused kernel takes the key at that position from registers, not from the cache.
    """
    if q.shape[0] != seq_lens.shape[0]:  # prefill or mixed: the two kernels Attention.forward ran before
        rotary_write_kv(positions, q, k, v, cos_sin_cache, rotary_dim, is_neox, kv_cache, slot_mapping)
        return paged_attention(q, kv_cache, query_start_loc, seq_lens, block_tables, scale, sliding_window,
                               logit_softcap, alibi_slopes, causal, k=k, v=v)
    rope = DecodeRope(k, v, positions.reshape(-1).contiguous(), slot_mapping.reshape(-1).contiguous(), cos_sin_cache,
                      rotary_dim, is_neox)
    return _paged_attention(q, kv_cache, query_start_loc, seq_lens, block_tables, scale, sliding_window, logit_softcap,
                            alibi_slopes, causal, k, v, None, rope)


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
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of a packed batch's new tokens over each sequence's whole context in the paged cache.

    q (T, nh, hd); kv_cache (2, num_blocks, block_size, nkv, hd) already holding the new tokens' k/v;
    sequence i owns q rows query_start_loc[i]:query_start_loc[i+1], its last seq_lens[i] - 1 position
    being the newest, and its context lives in blocks block_tables[i]. Mixed prefill + decode batches
    and chunked prefill are the same case here. k/v (T, nkv, hd), the new tokens' keys and values the cache
    already holds, are accepted for paged_attention's signature and not needed here. Returns (T, nh, hd).
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


def rope_paged_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    is_neox: bool,
    slot_mapping: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """rotary_write_kv_ref (rotate q and k by positions (T,), write the rotated k and v at slot_mapping (T,), negative
    slots not written), then paged_attention_ref of the rotated q over the cache. q (T, nh, hd), k/v (T, nkv, hd):
    the new tokens, not rotated and not in kv_cache (2, num_blocks, block_size, nkv, hd) yet; they may be strided views
    of one fused qkv output. Returns (T, nh, hd); the cache then holds the rotated new k and v. q's and k's contents
    afterwards are unspecified: this reference rotates them in place, the Triton decode path leaves them as they were.
    """
    rotary_write_kv_ref(positions, q, k, v, cos_sin_cache, rotary_dim, is_neox, kv_cache, slot_mapping)
    return paged_attention_ref(q, kv_cache, query_start_loc, seq_lens, block_tables, scale, sliding_window,
                               logit_softcap, alibi_slopes, causal, k=k, v=v)
