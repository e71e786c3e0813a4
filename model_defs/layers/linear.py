"""The one linear layer of every projection, its pluggable method, and the fused ones (qkv, gate_up)."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import torch
from torch import nn

from llmctl.kernels.dispatch import get_op


class LinearMethod(ABC):
    """How a Linear holds and applies its parameters (vLLM's LinearMethodBase).

    A quantized format or a tensor-parallel split is a new method handed to the layers, not an edit to the
    family files. Loading stays generic: the loader copies each checkpoint tensor into the parameter of the
    same name (through shard_slice / from_checkpoint_layout where the layer has them).
    """

    @abstractmethod
    def create_weights(self, layer: Linear) -> None:
        """Register the layer's parameters (under the checkpoint's names) for in_features -> out_features."""

    @abstractmethod
    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features)."""

    def fusable(self, layer: Linear) -> bool:
        """Whether fused kernels may read layer.weight / layer.bias as a plain (out, in) matrix (norm + GEMV)."""
        return False


class UnquantizedLinearMethod(LinearMethod):
    """weight (out, in) and an optional bias (out,) in the model dtype, through the dispatched `linear` op."""

    def create_weights(self, layer: Linear) -> None:
        layer.weight = nn.Parameter(torch.empty(layer.out_features, layer.in_features), requires_grad=False)
        bias = nn.Parameter(torch.empty(layer.out_features), requires_grad=False) if layer.has_bias else None
        layer.register_parameter("bias", bias)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        # The small-M GEMV kernel for decode rows, cuBLAS otherwise (kernels/gemv.py).
        return get_op("linear", x.device)(x, layer.weight, layer.bias)

    def fusable(self, layer: Linear) -> bool:
        return True


UNQUANTIZED = UnquantizedLinearMethod()
_METHOD: ContextVar[LinearMethod] = ContextVar("linear_method", default=UNQUANTIZED)


@contextlib.contextmanager
def linear_method(method: LinearMethod) -> Iterator[None]:
    """Every Linear built inside takes `method`: how a whole model gets another method with no family edit."""
    token = _METHOD.set(method)
    try:
        yield
    finally:
        _METHOD.reset(token)


class Linear(nn.Module):
    """x (..., in_features) -> (..., out_features): every projection of every family, its parameters and compute
    owned by its method (linear_method()'s, unquantized by default). bias defaults to True, as nn.Linear's."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, method: LinearMethod | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.has_bias = bias
        self.method = method or _METHOD.get()
        self.method.create_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}"


class MergedLinear(Linear):
    """One Linear whose output rows are the concatenation of named shards, e.g. q|k|v or gate|up.

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

