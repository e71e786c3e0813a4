"""The paged KV cache: fixed-size blocks, a block table per sequence, cache sizing and allocation."""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass, replace

import torch

from llmctl.core.engine.config import EngineConfig
from llmctl.core.engine.sequence import Sequence
from llmctl.core.errors import UsageError

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30  # 1 GiB


@dataclass(frozen=True)
class KVCacheSpec:
    """What one token costs in the cache: per layer, K and V of num_kv_heads x head_dim."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def bytes_per_block(self, block_size: int) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * block_size * self.num_kv_heads * self.head_dim * elem


def kv_cache_spec(model, dtype: torch.dtype) -> KVCacheSpec:
    """The cache layout the built model's attention layers need (CausalLM.kv_cache_shape, model_defs/base.py)."""
    return KVCacheSpec(*model.kv_cache_shape(), dtype)


def blocks_needed(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def num_blocks_for_budget(
    spec: KVCacheSpec,
    block_size: int,
    budget_bytes: int,
    max_model_len: int,
    max_num_seqs: int,
) -> int:
    """Blocks that fit in budget_bytes, capped at what max_num_seqs sequences of max_model_len can use.

    The caller checks that the result holds at least one sequence of max_model_len tokens.
    """
    per_block = spec.bytes_per_block(block_size)
    cap = blocks_needed(max_model_len, block_size) * max_num_seqs
    return max(0, min(int(budget_bytes // per_block), cap))


def cuda_kv_budget(device: torch.device, gpu_memory_utilization: float, peak_bytes: int) -> int:
    """Bytes left for the KV cache on a CUDA device.

    gpu_memory_utilization is the share of the whole card this process may use; from it we take the
    memory other processes hold, our weights and the peak activation memory of a profiling forward.
    """
    free, total = torch.cuda.mem_get_info(device)
    reserved = torch.cuda.memory_reserved(device)
    used_by_others = max(0, total - free - reserved)
    return int(total * gpu_memory_utilization) - used_by_others - peak_bytes


def profile_peak(model, device: torch.device, max_num_batched_tokens: int, max_model_len: int) -> int:
    """Peak bytes of one cache-less forward over a full token budget (weights included)."""
    from llmctl.model_defs.layers.context import AttentionMetadata, ForwardContext

    n = max(1, min(max_num_batched_tokens, max_model_len))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=device),
        seq_lens=torch.tensor([n], dtype=torch.int32, device=device),
        slot_mapping=torch.zeros(n, dtype=torch.int64, device=device),
        block_tables=torch.zeros((1, 1), dtype=torch.int32, device=device),
        max_query_len=n,
        max_seq_len=n,
    )
    with torch.inference_mode():
        ids = torch.zeros(n, dtype=torch.int64, device=device)
        pos = torch.arange(n, dtype=torch.int64, device=device)
        hidden = model(ids, pos, ForwardContext(meta, None))
        model.compute_logits(hidden[-1:])
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.empty_cache()
    return peak


def size_kv_cache(model, spec: KVCacheSpec, config: EngineConfig) -> EngineConfig:
    """The resolved config with num_kv_blocks fixed: given, else as many as kv_cache_memory bytes hold (any device),
    else as gpu_memory_utilization leaves on CUDA / 1 GiB on CPU, capped at what max_num_seqs sequences of
    max_model_len use.

    When the blocks cannot hold one sequence of max_model_len tokens, shrink_max_model_len lowers max_model_len to
    fit (with a warning); otherwise UsageError.
    """
    blocks, block_size, max_model_len = config.num_kv_blocks, config.block_size, config.max_model_len
    if blocks is None:
        if config.kv_cache_memory is not None:  # an explicit byte budget wins on every device
            budget = config.kv_cache_memory
        elif config.device.type == "cuda":
            peak = profile_peak(model, config.device, config.max_num_batched_tokens, max_model_len)
            budget = cuda_kv_budget(config.device, config.gpu_memory_utilization, peak)
        else:
            budget = DEFAULT_CPU_KV_CACHE_BYTES
        blocks = num_blocks_for_budget(spec, block_size, budget, max_model_len, config.max_num_seqs)
    capacity = blocks * block_size
    if capacity < max_model_len:
        if not config.shrink_max_model_len or blocks < 1:
            raise UsageError(
                f"the KV cache holds {capacity} tokens, fewer than max_model_len={max_model_len}",
                hint="lower max_model_len, or give the cache more memory (kv_cache_memory, "
                "gpu_memory_utilization) or blocks (num_kv_blocks)",
            )
        warnings.warn(f"max_model_len lowered from {max_model_len} to {capacity}: what the KV cache holds")
        max_model_len = capacity
    return replace(config, num_kv_blocks=blocks, max_model_len=max_model_len)


def allocate_kv_caches(spec: KVCacheSpec, num_blocks: int, block_size: int, device) -> list[torch.Tensor]:
    """One (2, num_blocks, block_size, num_kv_heads, head_dim) tensor per layer: K then V."""
    shape = (2, num_blocks, block_size, spec.num_kv_heads, spec.head_dim)
    return [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]


class BlockManager:
    """Hands out fixed-size blocks from a free list; each sequence owns the blocks in its block table."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise UsageError(f"need at least one block of at least one token (got {num_blocks} x {block_size})")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_to_grow(self, seq: Sequence, num_tokens: int) -> int:
        """How many more blocks seq needs so that its table covers num_tokens tokens."""
        return max(0, blocks_needed(num_tokens, self.block_size) - len(seq.block_table))

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_to_grow(seq, num_tokens) <= len(self._free)

    def grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Extend seq's block table to cover num_tokens; False (and nothing taken) if blocks run out."""
        n = self.blocks_to_grow(seq, num_tokens)
        if n > len(self._free):
            return False
        seq.block_table.extend(self._free.popleft() for _ in range(n))
        return True

    def free(self, seq: Sequence) -> None:
        """Return all of seq's blocks; most recently used go to the back of the free list."""
        self._free.extend(reversed(seq.block_table))
        seq.block_table = []
