"""The one object the runner binds for a forward pass: attention metadata and the paged KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Describes one packed batch of B sequences holding T new tokens in total (no padding).

    Sequence i contributes tokens query_start_loc[i]:query_start_loc[i+1] of the packed batch; those are
    its newest tokens, preceded by seq_lens[i] - query_len(i) tokens already in the KV cache.
    """

    query_start_loc: torch.Tensor  # (B + 1,) int32, cumulative query lengths, starts at 0
    seq_lens: torch.Tensor  # (B,) int32, context length after this step (cached + new)
    slot_mapping: torch.Tensor  # (T,) int64, flat cache slot (block * block_size + offset) per new token
    block_tables: torch.Tensor  # (B, max_blocks) int32, physical block ids per sequence (padding: 0)
    max_query_len: int
    max_seq_len: int
    causal: bool = True  # False for encoders (bidirectional attention within each sequence)

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]


@dataclass
class ForwardContext:
    """What the runner hands the model for one step.

    kv_caches[layer] is (2, num_blocks, block_size, num_kv_heads, head_dim): k then v. With
    kv_caches None the attention runs over the packed batch alone (encoders, one-shot prompts).
    """

    attn_metadata: AttentionMetadata
    kv_caches: list[torch.Tensor] | None = None
