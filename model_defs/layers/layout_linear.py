"""Linear layers whose checkpoint stores the weight in another layout: GPT-2's Conv1D, per-head interleaved qkv."""

from __future__ import annotations

import torch

from llmctl.model_defs.layers.linear import Linear


class Conv1DLinear(Linear):
    """A Linear filled from a transformers Conv1D (GPT-2), whose checkpoint weight is (in, out), not (out, in).

    The generic loader calls from_checkpoint_layout() on each tensor it copies into this module.
    """

    def from_checkpoint_layout(self, param_name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.t() if param_name == "weight" else tensor


class HeadInterleavedQKVLinear(Linear):
    """Fused q|k|v projection whose checkpoint rows are grouped per head: (nh, 3, hd) as GPT-NeoX and BLOOM store
    query_key_value. Loading regroups them to q|k|v (3, nh, hd), so forward's output splits like QKVLinear's.
    """

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, bias: bool = True):
        super().__init__(hidden_size, 3 * num_heads * head_dim, bias=bias)
        self.num_heads = num_heads
        self.head_dim = head_dim

    def from_checkpoint_layout(self, param_name: str, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.shape[0] != self.out_features:
            return tensor  # the loader reports the shape mismatch, naming the tensor
        rest = tensor.shape[1:]  # (in,) for the weight, () for the bias
        grouped = tensor.reshape(self.num_heads, 3, self.head_dim, *rest)  # (nh, 3, hd, ...)
        return grouped.transpose(0, 1).reshape(tensor.shape)  # (3 * nh * hd, ...): q | k | v
