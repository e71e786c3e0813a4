"""The reference's batched decode path equals per-sequence attention over the same paged context."""

from __future__ import annotations

import pytest
import torch

from llmctl.kernels.attention import _attend, paged_attention_ref


def _per_sequence(q, kv_cache, seq_lens, block_tables, scale, **opts):
    block_size, nkv, hd = kv_cache.shape[2:]
    rows = []
    for i, n in enumerate(seq_lens.tolist()):
        blocks = block_tables[i, : -(-n // block_size)].long()
        k = kv_cache[0, blocks].reshape(-1, nkv, hd)[:n]
        v = kv_cache[1, blocks].reshape(-1, nkv, hd)[:n]
        pos = torch.arange(n)
        rows.append(_attend(q[i : i + 1], k, v, pos[n - 1 :], pos, scale, causal=True, **opts))
    return torch.cat(rows)


@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 4), (8, 2), (8, 1)])
@pytest.mark.parametrize(
    "opts",
    [
        {"sliding_window": None, "logit_softcap": None, "alibi_slopes": None},
        {"sliding_window": 5, "logit_softcap": None, "alibi_slopes": None},
        {"sliding_window": None, "logit_softcap": 30.0, "alibi_slopes": None},
        {"sliding_window": None, "logit_softcap": None, "alibi_slopes": "alibi"},
    ],
)
def test_batched_decode_matches_loop(num_heads, num_kv_heads, opts):
    gen = torch.Generator().manual_seed(0)
    block_size, head_dim, num_blocks = 4, 16, 40
    seq_lens = torch.tensor([1, 7, 33, 4, 13], dtype=torch.int32)
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    # Each sequence owns distinct, shuffled blocks; the table's padding points at block 0.
    perm = torch.randperm(num_blocks, generator=gen)
    table = torch.zeros(len(seq_lens), 10, dtype=torch.int32)
    used = 0
    for i, n in enumerate(seq_lens.tolist()):
        need = -(-n // block_size)
        table[i, :need] = perm[used : used + need]
        used += need
    q = torch.randn(len(seq_lens), num_heads, head_dim, generator=gen)
    if opts["alibi_slopes"] == "alibi":
        opts = {**opts, "alibi_slopes": torch.rand(num_heads, generator=gen)}
    query_start_loc = torch.arange(len(seq_lens) + 1, dtype=torch.int32)
    got = paged_attention_ref(q, kv_cache, query_start_loc, seq_lens, table, 0.25, **opts)
    want = _per_sequence(q, kv_cache, seq_lens, table, 0.25, **opts)
    # Same float32 arithmetic up to summation order.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
