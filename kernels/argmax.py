"""Row-wise argmax (greedy sampling over the vocabulary): torch reference and a two-stage Triton kernel."""

from __future__ import annotations

import torch

from llmctl.kernels.triton_compat import pdl_enabled, pdl_launch, pdl_trigger, pdl_wait, require_triton, tl, triton

# Elements per program of the first stage: a Llama-3 vocabulary (128,256) is 32 programs of one load each.
ARGMAX_BLOCK = 4096
_INT_MAX = 2**31 - 1


@triton.jit
def _best_of(vals, idx, valid):
    """(value, index) of the largest of vals among valid lanes, the lowest index on ties; NaN beats every number
    (torch.argmax's order). Returns (float32 value, int32 index); all lanes invalid gives (-inf, INT_MAX)."""
    is_nan = (vals != vals) & valid
    nan_idx = tl.min(tl.where(is_nan, idx, 2147483647), axis=0)
    best = tl.max(tl.where(valid & ~is_nan, vals, float("-inf")), axis=0)
    best_idx = tl.min(tl.where(valid & (vals == best), idx, 2147483647), axis=0)
    has_nan = nan_idx < 2147483647
    return tl.where(has_nan, float("nan"), best), tl.where(has_nan, nan_idx, best_idx)


@triton.jit
def _argmax_block_kernel(x_ptr, part_val_ptr, part_idx_ptr, V, stride_x, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Stage 1, grid (rows, cdiv(V, BLOCK)): each program's best (value, index) of its BLOCK columns."""
    pdl_trigger(PDL)
    pdl_wait(PDL)
    row = tl.program_id(0)
    blk = tl.program_id(1)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    valid = cols < V
    x = tl.load(x_ptr + row.to(tl.int64) * stride_x + cols, mask=valid, other=float("-inf")).to(tl.float32)
    best, best_idx = _best_of(x, cols, valid)
    slot = row * tl.num_programs(1) + blk
    tl.store(part_val_ptr + slot, best)
    tl.store(part_idx_ptr + slot, best_idx)


@triton.jit
def _argmax_merge_kernel(part_val_ptr, part_idx_ptr, out_ptr, num_parts, PARTS: tl.constexpr, PDL: tl.constexpr):
    """Stage 2, grid (rows,): the best of a row's partial results; their indices keep the tie order."""
    pdl_wait(PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, PARTS)
    valid = offs < num_parts
    vals = tl.load(part_val_ptr + row * num_parts + offs, mask=valid, other=float("-inf"))
    idx = tl.load(part_idx_ptr + row * num_parts + offs, mask=valid, other=2147483647)
    _, best_idx = _best_of(vals, idx, valid)
    tl.store(out_ptr + row, best_idx.to(tl.int64))


def argmax(x: torch.Tensor) -> torch.Tensor:
    """Triton argmax_ref for (B, V) float rows: two small launches instead of torch's one-block reduction."""
    require_triton()
    if x.dim() != 2:
        raise ValueError(f"argmax takes (B, V) rows, got shape {tuple(x.shape)}")
    rows, vocab = x.shape
    if vocab == 0:
        raise ValueError("argmax over an empty dimension")
    if vocab > _INT_MAX:
        raise ValueError(f"argmax over {vocab} columns: more than int32 indices hold")
    out = torch.empty(rows, dtype=torch.int64, device=x.device)
    if rows == 0:
        return out
    if x.stride(1) != 1:
        x = x.contiguous()
    parts = triton.cdiv(vocab, ARGMAX_BLOCK)
    part_val = torch.empty(rows, parts, dtype=torch.float32, device=x.device)
    part_idx = torch.empty(rows, parts, dtype=torch.int32, device=x.device)
    pdl = pdl_enabled(x.device)
    _argmax_block_kernel[(rows, parts)](
        x, part_val, part_idx, vocab, x.stride(0), BLOCK=ARGMAX_BLOCK, PDL=pdl, num_warps=8, **pdl_launch(pdl)
    )
    _argmax_merge_kernel[(rows,)](
        part_val, part_idx, out, parts, PARTS=max(16, triton.next_power_of_2(parts)), PDL=pdl, num_warps=4,
        **pdl_launch(pdl),
    )  # fmt: skip
    return out


def argmax_ref(x: torch.Tensor) -> torch.Tensor:
    """x (B, V) -> (B,) int64: each row's index of its largest value, the first on ties (NaN counts as largest)."""
    return x.argmax(dim=-1)
