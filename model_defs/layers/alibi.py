"""ALiBi slopes as transformers computes them: Bloom / Falcon (one formula) and MPT (alibi_bias_max)."""

from __future__ import annotations

import math

import torch


def bloom_alibi_slopes(num_heads: int) -> torch.Tensor:
    """(num_heads,) float32 slopes of Bloom and Falcon (transformers' _get_alibi_slopes, Press et al.).

    The closest power of two n gets slopes 2^(-8k/n), k = 1..n; the remaining heads take the odd
    powers 1, 3, 5, ... of 2^(-8/(2n)), i.e. every other slope of the next power of two.
    """
    closest = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32))
    if closest != num_heads:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), dtype=torch.float32)
        remaining = min(closest, num_heads - closest)
        extra = torch.pow(extra_base, torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.int32))
        slopes = torch.cat([slopes, extra])
    return slopes


def mpt_alibi_slopes(num_heads: int, alibi_bias_max: float = 8.0) -> torch.Tensor:
    """(num_heads,) float32 slopes of MPT: 1 / 2^(k * alibi_bias_max / n2), k = 1..n2, n2 the next power of two.

    Unlike Bloom, MPT rounds the head count up: for a non-power of two it keeps the odd-indexed
    slopes first, then the even-indexed ones, and takes the first num_heads of them.
    """
    n2 = 2 ** math.ceil(math.log2(num_heads))
    base = torch.arange(1, n2 + 1, dtype=torch.int64).float() * (alibi_bias_max / n2)
    slopes = 1.0 / torch.pow(2, base)
    if n2 != num_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:num_heads]
    return slopes
