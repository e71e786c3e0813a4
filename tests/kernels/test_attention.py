"""Attention Triton kernels (varlen prefill, paged prefill, split-KV decode) against their torch references."""

import pytest
import torch
from torch.testing import assert_close

from llmctl.kernels.attention import (
    _options,
    paged_attention,
    paged_attention_ref,
    varlen_attention,
    varlen_attention_ref,
)
from llmctl.kernels.attention_decode import decode_paged
from llmctl.kernels.tuning import AttnLaunch

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="too slow for the Triton interpreter")

# fp32: the kernel's dot products are IEEE fp32 (no tf32), only the summation order and the online softmax
# rescaling differ from the reference: ~1e-6, so 2e-5. bf16/fp16: the reference softmax and P@V run in fp32,
# the kernel rounds P to the input dtype for the tensor-core P@V (relative 2^-8 / 2^-11 per term) and both
# round the output once: 2e-2 for bf16, 5e-3 for fp16, on outputs of size ~1.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
}
OPTIONS = {
    "plain": {},
    "window": {"sliding_window": 6},
    "softcap": {"logit_softcap": 2.0},
    "alibi": {"alibi": True},
}


def _opts(name, num_heads, device):
    opts = dict(OPTIONS[name])
    if opts.pop("alibi", False):
        opts["alibi_slopes"] = 2.0 ** (-8.0 * torch.arange(1, num_heads + 1, device=device) / num_heads)
    return opts


def _qsl(lens, device):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)


def _paged_batch(q_lens, seq_lens, nh, nkv, hd, block_size, dtype, device):
    """A packed batch plus a paged cache whose blocks are scattered; unused table entries point at a poison block."""
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 2
    kv_cache = torch.randn(2, num_blocks, block_size, nkv, hd, device=device).to(dtype)
    poison = num_blocks - 1
    kv_cache[:, poison] = 50.0  # any read past a sequence's table would swamp the result
    order = torch.randperm(num_blocks - 1, device=device).tolist()
    block_tables = torch.full((len(seq_lens), max(blocks_per_seq) + 2), poison, dtype=torch.int32, device=device)
    for i, n in enumerate(blocks_per_seq):
        block_tables[i, :n] = torch.tensor(order[:n], dtype=torch.int32)
        order = order[n:]
    q = torch.randn(sum(q_lens), nh, hd, device=device).to(dtype)
    seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return q, kv_cache, _qsl(q_lens, device), seq_lens_t, block_tables


def _new_kv(kv_cache, q_lens, seq_lens, block_tables, nh):
    """The batch's new k/v (T, nkv, hd) gathered from the cache, as strided views of one packed (T, qkv) tensor
    (like the layer's split of a fused projection), and the (block, slot) pairs they came from."""
    block_size, nkv, hd = kv_cache.shape[2:]
    slots = []
    for i, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens)):
        for pos in range(seq_len - q_len, seq_len):
            slots.append((int(block_tables[i, pos // block_size]), pos % block_size))
    blocks, offsets = (torch.tensor(x, device=kv_cache.device) for x in zip(*slots))
    qkv = torch.randn(len(slots), (nh + 2 * nkv) * hd, device=kv_cache.device).to(kv_cache.dtype)
    k = qkv[:, nh * hd : (nh + nkv) * hd].view(-1, nkv, hd)  # (T, nkv, hd), token stride (nh + 2 nkv) hd
    v = qkv[:, (nh + nkv) * hd :].view(-1, nkv, hd)
    k.copy_(kv_cache[0, blocks, offsets])
    v.copy_(kv_cache[1, blocks, offsets])
    return k, v, (blocks, offsets)


def _check_paged(q_lens, seq_lens, nh, nkv, hd, dtype, device, block_size=16, causal=True, option="plain",
                 new_kv=False, launch=None):
    """Kernel vs reference. new_kv: the kernel also gets the new tokens' k/v, and their cache slots are poisoned
    after the reference ran, so any new key read through the block table instead of k/v would show."""
    q, kv_cache, qsl, sl, bt = _paged_batch(q_lens, seq_lens, nh, nkv, hd, block_size, dtype, device)
    opts = _opts(option, nh, device)
    expected = paged_attention_ref(q, kv_cache, qsl, sl, bt, hd**-0.5, causal=causal, **opts)
    if new_kv:
        k, v, (blocks, offsets) = _new_kv(kv_cache, q_lens, seq_lens, bt, nh)
        if q.shape[0] != len(seq_lens):  # an all-decode batch (T == num_seqs) still reads the cache
            kv_cache[:, blocks, offsets] = 50.0
        opts.update(k=k, v=v)
    got = paged_attention(q, kv_cache, qsl, sl, bt, hd**-0.5, causal=causal, launch=launch, **opts)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert_close(got, expected, **TOL[dtype])


# (head_dim, num_heads, num_kv_heads): every head dim the brief names, GQA ratios 1, 4 and 8.
HEADS = [(64, 2, 2), (80, 4, 1), (96, 8, 1), (128, 4, 2), (256, 2, 1)]


@pytest.mark.parametrize("hd,nh,nkv", HEADS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_varlen_head_dims(device, hd, nh, nkv, causal):
    lens = [1, 7, 33]
    q = torch.randn(sum(lens), nh, hd, device=device)
    k = torch.randn(sum(lens), nkv, hd, device=device)
    v = torch.randn(sum(lens), nkv, hd, device=device)
    qsl = _qsl(lens, device)
    expected = varlen_attention_ref(q, k, v, qsl, hd**-0.5, causal=causal)
    assert_close(varlen_attention(q, k, v, qsl, hd**-0.5, causal=causal), expected, **TOL[torch.float32])


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_varlen_options(device, option, causal, dtype):
    nh, nkv, hd, lens = 4, 2, 64, [5, 1, 20]
    q = torch.randn(sum(lens), nh, hd, device=device).to(dtype)
    kv = torch.randn(2, sum(lens), nkv, hd, device=device).to(dtype)
    qsl, opts = _qsl(lens, device), _opts(option, nh, device)
    expected = varlen_attention_ref(q, kv[0], kv[1], qsl, 0.2, causal=causal, **opts)
    assert_close(varlen_attention(q, kv[0], kv[1], qsl, 0.2, causal=causal, **opts), expected, **TOL[dtype])


@pytest.mark.parametrize(
    "lens,dtype",
    [
        ([511], torch.float32),
        pytest.param([1000, 1, 1537, 64], torch.bfloat16, marks=cuda_only),
        pytest.param([3000, 257], torch.float16, marks=cuda_only),
    ],
)
def test_varlen_long(device, lens, dtype):
    nh, nkv, hd = (1, 1, 64) if device.type == "cpu" else (32, 8, 128)
    q = torch.randn(sum(lens), nh, hd, device=device).to(dtype)
    kv = torch.randn(2, sum(lens), nkv, hd, device=device).to(dtype)
    qsl = _qsl(lens, device)
    expected = varlen_attention_ref(q, kv[0], kv[1], qsl, hd**-0.5)
    assert_close(varlen_attention(q, kv[0], kv[1], qsl, hd**-0.5), expected, **TOL[dtype])


# (q_lens, seq_lens): each sequence's new tokens are the last q_len of its seq_len positions.
PAGED_CASES = {
    "fresh_prefill": ([7, 33], [7, 33]),
    "mixed_prefill_decode": ([5, 1, 17, 1], [5, 9, 40, 33]),  # fresh, decode, chunked prefill, decode
    "block_edges": ([16, 17, 1, 2], [16, 33, 32, 17]),
    "chunked_long_context": ([33], [300]),
}


@pytest.mark.parametrize("case", list(PAGED_CASES))
@pytest.mark.parametrize("hd,nh,nkv", [(64, 2, 2), (96, 8, 1), (128, 4, 1)])
def test_paged_prefill_batches(device, case, hd, nh, nkv):
    q_lens, seq_lens = PAGED_CASES[case]
    _check_paged(q_lens, seq_lens, nh, nkv, hd, torch.float32, device)


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_paged_prefill_options(device, option, causal):
    _check_paged([5, 1, 12], [5, 20, 30], 4, 2, 64, torch.float32, device, causal=causal, option=option)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_paged_prefill_half_precision_and_page_sizes(device, dtype, block_size):
    _check_paged([9, 1, 20], [40, 17, 20], 4, 1, 80, dtype, device, block_size=block_size)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_paged_prefill_long_llama_shapes(device, dtype):
    _check_paged([1000, 7, 1, 511], [1500, 700, 2048, 511], 32, 8, 128, dtype, device)
    _check_paged([1000, 1], [1200, 4000], 8, 1, 256, dtype, device, option="window")


# New keys from k/v (the layer passes the tensors it just wrote to the cache): each case crosses what the kernel
# splits on: context in the cache vs new rows, tile and page edges, the diagonal of causal tiles.
NEW_KV_CASES = {
    "fresh": ([1, 7, 33], [1, 7, 33]),
    "chunked_shared_block": ([17], [40]),  # context ends mid-block: that block holds old and new tokens
    "chunked_long_context": ([33, 64], [300, 128]),
    "mixed_prefill_decode": ([5, 1, 17, 1], [5, 9, 40, 33]),
    "block_edges": ([16, 17, 1, 2], [16, 33, 32, 17]),
    "all_decode": ([1, 1], [20, 33]),  # the decode kernel: k/v accepted, cache read
}
# Small tiles put several steps on each side of every split; None is the tuned tile (fp32 fallback: 64 x 32).
SMALL_TILES = {"tuned": None, "16x16": AttnLaunch(16, 16, 4, 1)}


@pytest.mark.parametrize("case", list(NEW_KV_CASES))
@pytest.mark.parametrize("tile", list(SMALL_TILES))
def test_paged_prefill_new_kv_batches(device, case, tile):
    q_lens, seq_lens = NEW_KV_CASES[case]
    _check_paged(q_lens, seq_lens, 2, 1, 32, torch.float32, device, new_kv=True, launch=SMALL_TILES[tile])


@pytest.mark.parametrize("q_lens,seq_lens", [([511], [511]), ([1030, 1, 77], [1030, 1500, 600])])
def test_paged_prefill_new_kv_long(device, q_lens, seq_lens):
    _check_paged(q_lens, seq_lens, 1, 1, 64, torch.float32, device, new_kv=True)


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_paged_prefill_new_kv_options(device, option, causal):
    _check_paged([5, 1, 12, 30], [5, 20, 30, 70], 4, 2, 64, torch.float32, device, causal=causal, option=option,
                 new_kv=True, launch=SMALL_TILES["16x16"])


@pytest.mark.parametrize("window", [1, 17, 40])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_windows_across_tiles_and_context(device, window, causal):
    """Windows narrower and wider than a tile: masked edge steps, unmasked middles, context partly out of reach."""
    launch = SMALL_TILES["16x16"]
    q, kv_cache, qsl, sl, bt = _paged_batch([40, 3, 70], [100, 50, 70], 2, 1, 32, 16, torch.float32, device)
    expected = paged_attention_ref(q, kv_cache, qsl, sl, bt, 0.2, sliding_window=window, causal=causal)
    k, v, (blocks, offsets) = _new_kv(kv_cache, [40, 3, 70], [100, 50, 70], bt, 2)
    kv_cache[:, blocks, offsets] = 50.0
    got = paged_attention(q, kv_cache, qsl, sl, bt, 0.2, sliding_window=window, causal=causal, k=k, v=v, launch=launch)
    assert_close(got, expected, **TOL[torch.float32])
    lens = [100, 1, 37]
    q, kv = torch.randn(sum(lens), 2, 32, device=device), torch.randn(2, sum(lens), 1, 32, device=device)
    qsl = _qsl(lens, device)
    expected = varlen_attention_ref(q, kv[0], kv[1], qsl, 0.2, sliding_window=window, causal=causal)
    got = varlen_attention(q, kv[0], kv[1], qsl, 0.2, sliding_window=window, causal=causal, launch=launch)
    assert_close(got, expected, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [8, 32])
def test_paged_prefill_new_kv_half_precision(device, dtype, block_size):
    _check_paged([9, 1, 20], [40, 17, 20], 4, 1, 80, dtype, device, block_size=block_size, new_kv=True)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_paged_prefill_new_kv_llama_shapes(device, dtype):
    _check_paged([2048], [2048], 32, 8, 128, dtype, device, new_kv=True)
    _check_paged([1024] * 4, [1024] * 4, 32, 8, 128, dtype, device, new_kv=True)
    _check_paged([512, 1000, 7, 1], [2048, 1000, 700, 2048], 32, 8, 128, dtype, device, new_kv=True)
    _check_paged([1000, 1], [1200, 4000], 8, 1, 256, dtype, device, option="window", new_kv=True)


@cuda_only
@pytest.mark.parametrize("launch", [AttnLaunch(64, 64, 4, 3), AttnLaunch(128, 64, 8, 3), AttnLaunch(128, 128, 8, 3),
                                    AttnLaunch(128, 64, 4, 4), AttnLaunch(64, 128, 4, 2)], ids=str)
def test_paged_prefill_sweep_configs(device, launch):
    """Every tile the GPU sweep tries gives the right answer (bf16, Llama heads)."""
    _check_paged([700, 300], [700, 1500], 32, 8, 128, torch.bfloat16, device, new_kv=True, launch=launch)


def test_paged_attention_rejects_bad_new_kv(device):
    q, kv_cache, qsl, sl, bt = _paged_batch([5, 3], [5, 9], 4, 2, 64, 16, torch.float32, device)
    k, v, _ = _new_kv(kv_cache, [5, 3], [5, 9], bt, 4)
    with pytest.raises(ValueError, match="both"):
        paged_attention(q, kv_cache, qsl, sl, bt, 0.1, k=k)
    with pytest.raises(ValueError, match="tokens"):
        paged_attention(q, kv_cache, qsl, sl, bt, 0.1, k=k[:-1], v=v[:-1])
    with pytest.raises(TypeError, match="share"):
        paged_attention(q, kv_cache, qsl, sl, bt, 0.1, k=k.double(), v=v.double())


# Decode: one new token per sequence (T == num_seqs) goes through the split-KV kernel.
DECODE_SEQ_LENS = [1, 16, 17, 100]


@pytest.mark.parametrize("hd,nh,nkv", [(64, 2, 2), (128, 4, 1), (80, 8, 1), (256, 8, 2)])
@pytest.mark.parametrize("num_splits,min_tiles", [(None, None), (3, 1), (5, 2)])
def test_decode_gqa_and_splits(device, hd, nh, nkv, num_splits, min_tiles):
    q, kv_cache, qsl, sl, bt = _paged_batch([1] * 4, DECODE_SEQ_LENS, nh, nkv, hd, 16, torch.float32, device)
    expected = paged_attention_ref(q, kv_cache, qsl, sl, bt, hd**-0.5)
    if num_splits is None:
        got = paged_attention(q, kv_cache, qsl, sl, bt, hd**-0.5)
    else:  # forced split counts: short sequences use fewer (or one) of the grid's splits, long ones all of them
        got = torch.empty_like(q)
        decode_paged(q, kv_cache, got, qsl, sl, bt, _options(q, hd**-0.5, None, None, None), num_splits=num_splits,
                     min_tiles=min_tiles)
    assert_close(got, expected, **TOL[torch.float32])


def test_decode_zero_length_rows_write_zeros(device):
    """CUDA-graph padding rows have context length 0: their output is zeros, the other rows are untouched."""
    q, kv_cache, qsl, sl, bt = _paged_batch([1] * 3, [5, 40, 70], 4, 2, 64, 16, torch.float32, device)
    expected = paged_attention_ref(q, kv_cache, qsl, sl, bt, 0.125)
    sl_padded = torch.cat([sl, torch.zeros(2, dtype=sl.dtype, device=device)])
    qsl_padded = torch.arange(6, dtype=qsl.dtype, device=device)
    bt_padded = torch.cat([bt, torch.zeros(2, bt.shape[1], dtype=bt.dtype, device=device)])
    q_padded = torch.cat([q, torch.randn(2, *q.shape[1:], dtype=q.dtype, device=device)])
    for num_splits in (1, 4):
        got = torch.full_like(q_padded, float("nan"))
        decode_paged(q_padded, kv_cache, got, qsl_padded, sl_padded, bt_padded,
                     _options(q_padded, 0.125, None, None, None), num_splits=num_splits, min_tiles=1)
        assert_close(got[:3], expected, **TOL[torch.float32])
        assert torch.equal(got[3:], torch.zeros_like(got[3:]))


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("num_splits", [1, 2])
def test_decode_options(device, option, num_splits):
    q, kv_cache, qsl, sl, bt = _paged_batch([1] * 3, [3, 20, 45], 4, 1, 64, 16, torch.float32, device)
    opts = _opts(option, 4, device)
    expected = paged_attention_ref(q, kv_cache, qsl, sl, bt, 0.125, **opts)
    got = torch.empty_like(q)
    decode_paged(
        q, kv_cache, got, qsl, sl, bt,
        _options(q, 0.125, opts.get("sliding_window"), opts.get("logit_softcap"), opts.get("alibi_slopes")),
        num_splits=num_splits, min_tiles=1,
    )
    assert_close(got, expected, **TOL[torch.float32])


@pytest.mark.parametrize(
    "seq_lens,dtype",
    [
        ([1030, 5], torch.bfloat16),
        pytest.param([4097, 1, 2000, 513] * 4, torch.bfloat16, marks=cuda_only),
        pytest.param([8192, 33], torch.float16, marks=cuda_only),
    ],
)
def test_decode_long_context(device, seq_lens, dtype):
    nh, nkv, hd = (8, 1, 64) if device.type == "cpu" else (32, 8, 128)
    q, kv_cache, qsl, sl, bt = _paged_batch([1] * len(seq_lens), seq_lens, nh, nkv, hd, 16, dtype, device)
    expected = paged_attention_ref(q, kv_cache, qsl, sl, bt, hd**-0.5)
    got = torch.empty_like(q)
    decode_paged(q, kv_cache, got, qsl, sl, bt, _options(q, hd**-0.5, None, None, None), num_splits=4, min_tiles=1)
    assert_close(got, expected, **TOL[dtype])
    assert_close(paged_attention(q, kv_cache, qsl, sl, bt, hd**-0.5), expected, **TOL[dtype])


def test_paged_attention_rejects_dtype_mismatch(device):
    q = torch.randn(2, 2, 64, device=device)
    kv_cache = torch.randn(2, 2, 16, 2, 64, device=device).to(torch.bfloat16)
    with pytest.raises(TypeError, match="share"):
        paged_attention(q, kv_cache, _qsl([1, 1], device), _qsl([1], device)[1:].repeat(2), torch.zeros(2, 1), 0.1)
