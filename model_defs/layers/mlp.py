"""Gated MLP with a fused gate_up projection: down(act(gate(x)) * up(x))."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.kernels.dispatch import get_op
from llmctl.model_defs.layers.activation import get_act_and_mul
from llmctl.model_defs.layers.linear import Linear, MergedLinear


class GatedMLP(nn.Module):
    """x (T, H) -> (T, H). Checkpoint gate_proj / up_proj fill shards 0 / 1 of gate_up_proj."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, bias: bool = False):
        super().__init__()
        self.gate_up_proj = MergedLinear(hidden_size, [intermediate_size] * 2, [0, 1], bias=bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = get_act_and_mul(hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.gate_up_proj(x))

    def down(self, gate_up: torch.Tensor) -> torch.Tensor:
        """(T, 2I) -> (T, H): the activation and the down projection, one kernel for the few rows of a decode step."""
        if not self.down_proj.method.fusable(self.down_proj):
            return self.down_proj(self.act_fn(gate_up))
        op = get_op("act_and_mul_linear", gate_up.device)
        return op(gate_up, self.down_proj.weight, self.down_proj.bias, act=self.act_fn.name)
