"""Block manager accounting and KV cache sizing."""

from __future__ import annotations

import pytest
import torch

from llmctl.core.engine.kv_cache import (
    BlockManager,
    KVCacheSpec,
    allocate_kv_caches,
    blocks_needed,
    kv_cache_spec,
    num_blocks_for_budget,
)
from llmctl.core.engine.outputs import RequestMetrics
from llmctl.core.engine.sampling_params import SamplingParams
from llmctl.core.engine.sequence import Sequence
from llmctl.core.errors import UsageError


def _seq(n_prompt: int, name: str = "r") -> Sequence:
    return Sequence(name, None, list(range(1, n_prompt + 1)), SamplingParams(), RequestMetrics(0.0))


def test_grow_and_free_accounting():
    bm = BlockManager(num_blocks=10, block_size=4)
    a, b = _seq(5, "a"), _seq(9, "b")
    assert bm.grow(a, 5)  # 2 blocks
    assert len(a.block_table) == 2 and bm.num_free_blocks == 8
    assert bm.grow(a, 8)  # still 2 blocks: 8 tokens fill them exactly
    assert len(a.block_table) == 2
    assert bm.grow(a, 9)  # a third block
    assert bm.grow(b, 9)
    assert bm.num_used_blocks == 6
    assert not set(a.block_table) & set(b.block_table)  # no block is shared
    bm.free(a)
    assert a.block_table == [] and bm.num_free_blocks == 7
    bm.free(b)
    assert bm.num_free_blocks == 10


def test_grow_failure_takes_nothing():
    bm = BlockManager(num_blocks=3, block_size=2)
    a, b = _seq(4, "a"), _seq(4, "b")
    assert bm.grow(a, 4)
    assert not bm.can_grow(b, 4)
    assert not bm.grow(b, 4)
    assert b.block_table == [] and bm.num_free_blocks == 1
    assert bm.grow(b, 2)
    assert bm.num_free_blocks == 0


def test_freed_blocks_are_reused():
    bm = BlockManager(num_blocks=4, block_size=1)
    for round_ in range(5):  # many alloc/free cycles never leak a block
        seqs = [_seq(2, f"s{round_}{i}") for i in range(2)]
        for s in seqs:
            assert bm.grow(s, 2)
        assert bm.num_free_blocks == 0
        assert sorted(b for s in seqs for b in s.block_table) == [0, 1, 2, 3]
        for s in seqs:
            bm.free(s)
    assert bm.num_free_blocks == 4


def test_blocks_needed():
    assert [blocks_needed(n, 16) for n in (1, 16, 17, 32, 33)] == [1, 1, 2, 2, 3]


def test_num_blocks_for_budget_caps():
    spec = KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=8, dtype=torch.float32)
    per_block = spec.bytes_per_block(4)
    assert per_block == 2 * 2 * 4 * 2 * 8 * 4
    # Budget-limited.
    assert num_blocks_for_budget(spec, 4, per_block * 10, max_model_len=16, max_num_seqs=8) == 10
    # Capped at max_num_seqs sequences of max_model_len: 2 seqs x 4 blocks.
    assert num_blocks_for_budget(spec, 4, per_block * 1000, max_model_len=16, max_num_seqs=2) == 8
    assert num_blocks_for_budget(spec, 4, per_block // 2, max_model_len=16, max_num_seqs=2) == 0


def test_kv_cache_spec_and_allocation():
    from transformers import LlamaConfig

    from llmctl.model_defs.llama import LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3, head_dim=32, vocab_size=32
    )
    spec = kv_cache_spec(LlamaForCausalLM(cfg), torch.float32)  # read from the attention layers built
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == (3, 2, 32)  # head_dim != hidden/heads
    caches = allocate_kv_caches(spec, num_blocks=5, block_size=4, device="cpu")
    assert len(caches) == 3
    assert caches[0].shape == (2, 5, 4, 2, 32)
    assert caches[0].data_ptr() != caches[1].data_ptr()
