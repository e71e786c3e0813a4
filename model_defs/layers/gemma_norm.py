"""Gemma's RMSNorm: scales by (1 + weight) in float32 before casting back, optionally fused with the residual add."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.kernels.dispatch import get_op


class GemmaRMSNorm(nn.Module):
    """forward(x) -> y; forward(x, residual) -> (y, x + residual).

    Unlike Llama's norm (cast the normalised value to x's dtype, then multiply by the weight), Gemma
    checkpoints store weight - 1 and transformers multiplies by (1 + weight) in float32 before the cast
    (kernels/rmsnorm.py gemma_rms_norm_ref). The weight is stored as in the checkpoint, so dummy weights
    N(0, 0.02) give a norm close to identity.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size), requires_grad=False)
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return get_op("gemma_rms_norm", x.device)(x, self.weight, self.eps)
        return get_op("gemma_fused_add_rms_norm", x.device)(x, residual, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
