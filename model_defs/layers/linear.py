"""Linear layers: the dispatched one, and those whose output stacks several checkpoint tensors (qkv, gate_up)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from llmctl.kernels.dispatch import get_op


class Linear(nn.Linear):
    """nn.Linear through the dispatched `linear` op: the small-M GEMV kernel for decode rows, cuBLAS otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_op("linear", x.device)(x, self.weight, self.bias)


class MergedLinear(Linear):
    """One nn.Linear whose output rows are the concatenation of named shards, e.g. q|k|v or gate|up.

    The loader fills shard `shard_id` of `weight` (and `bias`) from its own checkpoint tensor through
    shard_slice(); the model declares which checkpoint name maps to which shard in its
    weights_mapper.packed (model_defs/weights_mapper.py).
    """

    def __init__(self, in_features: int, output_sizes: Sequence[int], shard_ids: Sequence, bias: bool = False):
        if len(output_sizes) != len(shard_ids):
            raise ValueError("output_sizes and shard_ids must have the same length")
        super().__init__(in_features, sum(output_sizes), bias=bias)
        self.output_sizes = list(output_sizes)
        self.shard_ids = list(shard_ids)

    def shard_slice(self, shard_id) -> tuple[int, int]:
        """(start row, number of rows) of shard `shard_id` in the fused output."""
        index = self.shard_ids.index(shard_id)
        return sum(self.output_sizes[:index]), self.output_sizes[index]


class QKVLinear(MergedLinear):
    """Fused q|k|v projection: shards "q", "k", "v"."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        sizes = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
        super().__init__(hidden_size, sizes, ["q", "k", "v"], bias=bias)

