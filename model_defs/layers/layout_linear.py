"""Linear layers whose checkpoint stores the weight in another layout: GPT-2's Conv1D, per-head or per-group qkv."""

from __future__ import annotations

import torch

from llmctl.model_defs.layers.linear import Linear, QKVLinear


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


class KVGroupedQKVLinear(QKVLinear):
    """Fused q|k|v projection whose checkpoint rows are grouped per kv head: for each of the nkv groups, its
    q_per_kv query heads, then its key head, then its value head, (nkv, q_per_kv + 2, hd) as InternLM2 stores
    wqkv. Loading regroups them to q|k|v; query head g * q_per_kv + j stays the j-th of group g, the head order
    grouped attention (query head h reads kv head h // q_per_kv) expects.
    """

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        super().__init__(hidden_size, head_dim, num_heads, num_kv_heads, bias=bias)
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads
        self.q_per_kv = num_heads // num_kv_heads

    def from_checkpoint_layout(self, param_name: str, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.shape[0] != self.out_features:
            return tensor  # the loader reports the shape mismatch, naming the tensor
        rest = tensor.shape[1:]  # (in,) for the weight, () for the bias
        grouped = tensor.reshape(self.num_kv_heads, self.q_per_kv + 2, self.head_dim, *rest)  # (nkv, g + 2, hd, ...)
        q, k, v = grouped.split([self.q_per_kv, 1, 1], dim=1)
        return torch.cat([q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)])  # q | k | v
