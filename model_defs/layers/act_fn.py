"""Plain (ungated) activations named by HF `hidden_act` strings: exact-erf GELU as BERT uses, tanh GELU, ReLU, SiLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmctl.core.errors import UnsupportedModelError


class GELU(nn.Module):
    """gelu(x); approximate="none" is the exact erf form (BERT's "gelu"), "tanh" the tanh form ("gelu_new")."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


_ACTS = {
    "gelu": lambda: GELU("none"),
    "gelu_new": lambda: GELU("tanh"),
    "gelu_pytorch_tanh": lambda: GELU("tanh"),
    "gelu_fast": lambda: GELU("tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def get_act_fn(hidden_act: str) -> nn.Module:
    """The activation module for an HF `hidden_act` string (an MLP's up -> act -> down)."""
    try:
        return _ACTS[hidden_act]()
    except KeyError:
        raise UnsupportedModelError(
            f"activation {hidden_act!r} is not supported; known: {', '.join(sorted(_ACTS))}"
        ) from None
