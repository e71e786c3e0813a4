"""RMSNorm layer, optionally fused with the residual add."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.kernels.dispatch import get_op
from llmctl.model_defs.layers.linear import Linear


class RMSNorm(nn.Module):
    """forward(x) -> y; forward(x, residual) -> (y, x + residual), as vLLM's fused residual norm."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return get_op("rms_norm", x.device)(x, self.weight, self.eps)
        return get_op("fused_add_rms_norm", x.device)(x, residual, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def norm_then_linear(
    norm: RMSNorm, linear: Linear, x: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(norm(x [+ residual])), the residual stream after the add): one kernel for the few rows of a decode
    step, the norm kernel then the GEMM for larger batches (kernels/gemv.py). With residual None, x starts it."""
    if not linear.method.fusable(linear):  # the linear's weights are not a plain matrix the fused kernel can read
        if residual is None:
            return linear(norm(x)), x
        normed, residual = norm(x, residual)
        return linear(normed), residual
    out, new_residual = get_op("rms_norm_linear", x.device)(
        x, residual, norm.weight, norm.eps, linear.weight, linear.bias
    )
    return out, x if residual is None else new_residual
