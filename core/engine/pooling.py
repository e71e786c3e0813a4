"""Pooling over packed, padding-free batches (cls / mean / max / last token), normalisation, Matryoshka truncation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmctl.core.engine.embedding_config import POOLING_TYPES
from llmctl.core.errors import UsageError


def pool(hidden: torch.Tensor, seq_lens: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden (T, H) of B packed sequences with lengths seq_lens (B,) -> (B, H).

    Matches sentence-transformers' Pooling on a padded batch: cls = first token, mean = average over
    every token (special tokens included), max = element-wise max, lasttoken = each sequence's last token.
    Every sequence must have at least one token.
    """
    lens = seq_lens.to(device=hidden.device, dtype=torch.long)
    ends = torch.cumsum(lens, 0)  # (B,)
    starts = ends - lens
    if pooling == "cls":
        return hidden[starts]
    if pooling == "lasttoken":
        return hidden[ends - 1]
    seq_ids = torch.repeat_interleave(torch.arange(lens.shape[0], device=hidden.device), lens)  # (T,)
    if pooling == "mean":
        sums = torch.zeros(lens.shape[0], hidden.shape[1], dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, seq_ids, hidden.float())
        return (sums / lens[:, None].float()).to(hidden.dtype)
    if pooling == "max":
        out = torch.full((lens.shape[0], hidden.shape[1]), float("-inf"), dtype=hidden.dtype, device=hidden.device)
        return out.scatter_reduce_(0, seq_ids[:, None].expand_as(hidden), hidden, "amax")
    raise UsageError(f"unknown pooling {pooling!r}", hint=f"use one of {', '.join(POOLING_TYPES)}")


def truncate_dimensions(embeddings: torch.Tensor, dimensions: int | None) -> torch.Tensor:
    """Matryoshka truncation: the first `dimensions` columns of (B, D); UsageError when it exceeds D or is < 1."""
    if dimensions is None:
        return embeddings
    full = embeddings.shape[-1]
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= full:
        raise UsageError(f"dimensions must be an integer between 1 and the model's {full}, got {dimensions!r}")
    return embeddings[..., :dimensions]


def finish(embeddings: torch.Tensor, *, normalize: bool, dimensions: int | None) -> torch.Tensor:
    """Pooled (B, D) -> (B, dimensions or D) in float32: truncated first, then L2-normalised when asked."""
    out = truncate_dimensions(embeddings.float(), dimensions)
    if normalize:
        out = F.normalize(out, p=2, dim=-1)
    return out
