"""Gemma's RMSNorm: scales by (1 + weight) in float32 before casting back, optionally fused with the residual add."""

from __future__ import annotations

import torch
from torch import nn


class GemmaRMSNorm(nn.Module):
    """forward(x) -> y; forward(x, residual) -> (y, x + residual).

    Unlike Llama's norm (cast the normalised value to x's dtype, then multiply by the weight), Gemma
    checkpoints store weight - 1 and transformers multiplies by (1 + weight) in float32 before the cast
    (transformers PR 29402); half-precision outputs round differently, so this is its own layer. The
    weight is stored as in the checkpoint, so dummy weights N(0, 0.02) give a norm close to identity.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size), requires_grad=False)
        self.eps = eps

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., H)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return self._norm(x)
        residual = residual + x  # in the model dtype, as transformers adds its residual stream
        return self._norm(residual), residual

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
