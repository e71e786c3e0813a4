"""Gated activations over a fused [gate | up] projection."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.core.errors import UnsupportedModelError
from llmctl.kernels.dispatch import get_op


class SiluAndMul(nn.Module):
    """(..., 2*I) -> silu(gate) * up, (..., I)."""

    name = "silu"  # the `act` of the fused kernels (kernels/gemv.py act_and_mul_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_op("silu_and_mul", x.device)(x)


class GeluTanhAndMul(nn.Module):
    """(..., 2*I) -> gelu_tanh(gate) * up, (..., I)."""

    name = "gelu_tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_op("gelu_tanh_and_mul", x.device)(x)


_GATED = {
    "silu": SiluAndMul,
    "swish": SiluAndMul,
    "gelu_pytorch_tanh": GeluTanhAndMul,
    "gelu_tanh": GeluTanhAndMul,
}


def get_act_and_mul(hidden_act: str) -> nn.Module:
    """The gated activation module for an HF `hidden_act` string."""
    try:
        return _GATED[hidden_act]()
    except KeyError:
        raise UnsupportedModelError(
            f"gated activation {hidden_act!r} is not supported; known: {', '.join(sorted(_GATED))}"
        ) from None
