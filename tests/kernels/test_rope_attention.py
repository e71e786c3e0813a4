"""rope_paged_attention (rotary + KV-cache write folded into the decode kernel) against its reference composition."""

import pytest
import torch
from torch.testing import assert_close

from llmctl.kernels import attention, attention_decode, dispatch
from llmctl.kernels.attention import rope_paged_attention, rope_paged_attention_ref

# Output: the attention tolerances of test_attention.py (fp32: summation order only; bf16: P rounded for P@V), bf16
# loosened for the rotation: the reference rotates q and k with bf16 products, the kernel in fp32 with one rounding,
# so q and the new key differ by an ulp or two (~0.8% relative), which moves scores of size ~1 by about as much.
# Cache: the tolerances of test_rotary_kv.py (the new k as rotated there; v and every other row are exact).
OUT_TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
CACHE_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=1.6e-2)}
BLOCK_SIZE = 16
MAX_POSITION = 512


def _cos_sin(rotary_dim, device):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, device=device).float() / rotary_dim))
    angles = torch.arange(MAX_POSITION, device=device).float()[:, None] * inv_freq[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1)  # (MAX_POSITION, rotary_dim)


def _batch(q_lens, seq_lens, nh, nkv, hd, dtype, device):
    """A packed batch of new tokens (q/k/v: strided views of one fused qkv output, not rotated, not in the cache) over a
    random paged cache whose blocks are scattered; unused table entries point at a poison block. Returns the qkv tensor
    and a dict of the op's other arguments; slot_mapping holds each new token's slot, positions its position."""
    blocks_per_seq = [max(1, -(-s // BLOCK_SIZE)) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 2
    kv_cache = torch.randn(2, num_blocks, BLOCK_SIZE, nkv, hd, device=device).to(dtype)
    poison = num_blocks - 1
    kv_cache[:, poison] = 50.0  # any read past a sequence's table would swamp the result
    order = torch.randperm(num_blocks - 1, device=device).tolist()
    block_tables = torch.full((len(seq_lens), max(blocks_per_seq) + 2), poison, dtype=torch.int32, device=device)
    slots, positions = [], []
    for i, (n, q_len, seq_len) in enumerate(zip(blocks_per_seq, q_lens, seq_lens)):
        block_tables[i, :n] = torch.tensor(order[:n], dtype=torch.int32)
        order = order[n:]
        for pos in range(seq_len - q_len, seq_len):
            slots.append(int(block_tables[i, pos // BLOCK_SIZE]) * BLOCK_SIZE + pos % BLOCK_SIZE)
            positions.append(pos)
    qkv = torch.randn(sum(q_lens), (nh + 2 * nkv) * hd, device=device).to(dtype)
    args = dict(
        kv_cache=kv_cache,
        query_start_loc=torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables,
        positions=torch.tensor(positions, device=device),
        slot_mapping=torch.tensor(slots, device=device),
    )
    return qkv, args


def _split(qkv, nh, nkv, hd):
    """(T, (nh + 2 nkv) hd) -> q (T, nh, hd), k, v (T, nkv, hd): views with token stride (nh + 2 nkv) hd, as the layer
    passes them."""
    q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    return q.view(-1, nh, hd), k.view(-1, nkv, hd), v.view(-1, nkv, hd)


def _run_both(qkv, args, nh, nkv, hd, rotary_dim, neox, **options):
    """The Triton op and the reference on copies of the same inputs: (out, cache) of each."""
    cos_sin = _cos_sin(rotary_dim, qkv.device)
    results = []
    for op in (rope_paged_attention, rope_paged_attention_ref):
        call = dict(args, kv_cache=args["kv_cache"].clone())
        q, k, v = _split(qkv.clone(), nh, nkv, hd)
        out = op(q, k, v, cos_sin_cache=cos_sin, rotary_dim=rotary_dim, is_neox=neox, scale=hd**-0.5, **call, **options)
        results.append((out, call["kv_cache"]))
    return results


def _check(qkv, args, nh, nkv, hd, rotary_dim, neox, dtype, **options):
    (got, got_cache), (expected, expected_cache) = _run_both(qkv, args, nh, nkv, hd, rotary_dim, neox, **options)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert_close(got, expected, **OUT_TOL[dtype])
    assert_close(got_cache, expected_cache, **CACHE_TOL[dtype])  # the whole cache, written rows and the rest
    rows, original = got_cache.view(2, -1, nkv, hd), args["kv_cache"].view(2, -1, nkv, hd)
    slots = args["slot_mapping"]
    written = slots[slots >= 0]
    untouched = torch.ones(rows.shape[1], dtype=torch.bool, device=rows.device)
    untouched[written] = False  # every row but the new tokens' (padding tokens write none)
    assert torch.equal(rows[:, untouched], original[:, untouched])
    v = _split(qkv, nh, nkv, hd)[2]
    assert torch.equal(rows[1, written], v[slots >= 0])  # v is stored as given
    turned = (slots >= 0) & (args["positions"] > 0)  # position 0 rotates by nothing
    if turned.any():
        assert not torch.equal(rows[0, slots[turned]], _split(qkv, nh, nkv, hd)[1][turned])  # k is stored rotated
    return got, got_cache


@pytest.fixture
def splits(monkeypatch):
    """Force the decode grid to n splits of at least one key tile each (the CPU default is one or two)."""

    def force(n):
        monkeypatch.setattr(attention_decode, "decode_num_splits", lambda *args: n)
        monkeypatch.setattr(attention_decode, "MIN_SPLIT_KEYS", 1)

    return force


# name -> (seq_lens, nh, nkv, hd, rotary_dim, neox, forced splits). Decode: one new token per sequence at position
# seq_len - 1. Contexts of 1 (first token), block edges (16, 17, 33, 64) and long ones over several splits; 150 keys in
# fp32 tiles of 32 are 5 tiles over 4 splits of 2: the last split holds none, the third writes the new key.
DECODE_CASES = {
    "b1_first_token_mha": ([1], 4, 4, 64, 64, True, None),
    "b1_long_mha_gptj": ([100], 2, 2, 64, 64, False, 4),
    "b3_gqa4_hd128_gptj": ([17, 1, 150], 8, 2, 128, 128, False, 4),
    "b5_qwen_gqa7_partial": ([16, 33, 100, 1, 64], 14, 2, 64, 32, True, 3),
    "b3_hd80_partial_gptj": ([40, 7, 65], 4, 1, 80, 48, False, 2),
    "b3_hd96_gqa4": ([1, 33, 70], 4, 1, 96, 96, True, None),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decode_matches_reference(device, splits, case, dtype):
    seq_lens, nh, nkv, hd, rotary_dim, neox, num_splits = DECODE_CASES[case]
    if num_splits is not None:
        splits(num_splits)
    qkv, args = _batch([1] * len(seq_lens), seq_lens, nh, nkv, hd, dtype, device)
    _check(qkv, args, nh, nkv, hd, rotary_dim, neox, dtype)


def test_decode_padding_slot_and_shifted_positions(device, splits):
    """A token with slot -1 writes nothing (its row of the cache stays stale and is what both read at seq_len - 1);
    positions are read, not derived from seq_lens (here 3 more than seq_len - 1)."""
    splits(3)
    nh, nkv, hd = 4, 2, 64
    qkv, args = _batch([1, 1, 1], [20, 70, 5], nh, nkv, hd, torch.float32, device)
    args["slot_mapping"][1] = -1
    args["positions"] += 3
    _check(qkv, args, nh, nkv, hd, 64, True, torch.float32)
    got_shifted, _ = _run_both(qkv, args, nh, nkv, hd, 64, True)[0]
    args["positions"] -= 3
    got_plain, _ = _run_both(qkv, args, nh, nkv, hd, 64, True)[0]
    assert not torch.allclose(got_shifted, got_plain, atol=1e-3)  # the positions mattered


@pytest.mark.parametrize("options", [{"sliding_window": 20}, {"logit_softcap": 2.0}], ids=["window", "softcap"])
def test_decode_window_and_softcap(device, splits, options):
    splits(2)
    nh, nkv, hd = 8, 2, 64
    qkv, args = _batch([1, 1, 1], [1, 19, 90], nh, nkv, hd, torch.float32, device)
    _check(qkv, args, nh, nkv, hd, 64, True, torch.float32, **options)


def test_decode_graph_padding_rows(device, splits):
    """CUDA-graph padding rows (context 0, slot -1, position 0): no cache write, zeros out; the real rows as the
    reference gives them without the padding."""
    splits(2)
    nh, nkv, hd = 4, 1, 64
    qkv, args = _batch([1, 1], [9, 40], nh, nkv, hd, torch.float32, device)
    _, (expected, expected_cache) = _run_both(qkv, args, nh, nkv, hd, 64, True)
    tables = args["block_tables"]
    padded = dict(
        args,
        query_start_loc=torch.arange(5, dtype=torch.int32, device=device),
        seq_lens=torch.cat([args["seq_lens"], args["seq_lens"].new_zeros(2)]),
        block_tables=torch.cat([tables, tables.new_zeros(2, tables.shape[1])]),
        positions=torch.cat([args["positions"], args["positions"].new_zeros(2)]),
        slot_mapping=torch.cat([args["slot_mapping"], args["slot_mapping"].new_full((2,), -1)]),
        kv_cache=args["kv_cache"].clone(),
    )
    q, k, v = _split(torch.cat([qkv, torch.randn(2, qkv.shape[1], device=device)]), nh, nkv, hd)
    got = rope_paged_attention(q, k, v, cos_sin_cache=_cos_sin(64, device), rotary_dim=64, is_neox=True,
                               scale=hd**-0.5, **padded)
    assert_close(got[:2], expected, **OUT_TOL[torch.float32])
    assert torch.equal(got[2:], torch.zeros_like(got[2:]))
    assert_close(padded["kv_cache"], expected_cache, **CACHE_TOL[torch.float32])


# Prefill and mixed batches take the two-kernel path (rotary_write_kv, then paged_attention's prefill kernel). That
# kernel reads the batch's new keys from k/v and the reference from the cache, so a padding slot (-1) inside a prefill
# would make them differ by design: none here.
@pytest.mark.parametrize("q_lens,seq_lens", [([7, 33], [7, 33]), ([5, 1, 17, 1], [5, 9, 40, 33])],
                         ids=["prefill", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_prefill_and_mixed_batches(device, q_lens, seq_lens, dtype):
    nh, nkv, hd = 4, 2, 64
    qkv, args = _batch(q_lens, seq_lens, nh, nkv, hd, dtype, device)  # no padding slot: prefill reads new keys
    _check(qkv, args, nh, nkv, hd, 32, False, dtype)


def test_decode_is_one_launch(device, monkeypatch):
    """At decode the op launches the decode kernel once and neither rotary_write_kv nor paged_attention."""
    launches = []
    monkeypatch.setattr(attention, "rotary_write_kv", lambda *a, **k: launches.append("rotary_write_kv"))
    monkeypatch.setattr(attention, "paged_attention", lambda *a, **k: launches.append("paged_attention"))
    real = attention.decode_paged
    monkeypatch.setattr(attention, "decode_paged", lambda *a, **k: launches.append("decode") or real(*a, **k))
    nh, nkv, hd = 4, 2, 64
    qkv, args = _batch([1, 1], [3, 30], nh, nkv, hd, torch.float32, device)
    rope_paged_attention(*_split(qkv, nh, nkv, hd), cos_sin_cache=_cos_sin(64, device), rotary_dim=64, is_neox=True,
                         scale=0.125, **args)
    assert launches == ["decode"]


def test_rejects_bad_arguments(device):
    nh, nkv, hd = 4, 2, 64
    qkv, args = _batch([1, 1], [3, 30], nh, nkv, hd, torch.float32, device)
    q, k, v = _split(qkv, nh, nkv, hd)
    common = dict(cos_sin_cache=_cos_sin(64, device), is_neox=True, scale=0.125)
    with pytest.raises(ValueError, match="rotary_dim"):
        rope_paged_attention(q, k, v, rotary_dim=63, **common, **args)
    with pytest.raises(ValueError, match="positions"):
        rope_paged_attention(q, k, v, rotary_dim=64, **common, **dict(args, positions=args["positions"][:1]))
    with pytest.raises(TypeError, match="share"):
        rope_paged_attention(q.double(), k, v, rotary_dim=64, **common, **args)


def test_dispatch_and_layer_use_the_op(device, monkeypatch):
    """Attention.forward with a rope and a KV cache calls rope_paged_attention once; run through the Triton op it
    matches the layer run through the references (output and cache)."""
    from llmctl.model_defs.layers import attention as layer_module
    from llmctl.model_defs.layers.context import AttentionMetadata, ForwardContext
    from llmctl.model_defs.layers.rotary import get_rope

    assert dispatch.get_op("rope_paged_attention", "cpu") is rope_paged_attention_ref
    nh, nkv, hd = 4, 2, 64
    qkv, args = _batch([1, 1, 1], [1, 17, 40], nh, nkv, hd, torch.float32, device)
    meta = AttentionMetadata(query_start_loc=args["query_start_loc"], seq_lens=args["seq_lens"],
                             slot_mapping=args["slot_mapping"], block_tables=args["block_tables"], max_query_len=1,
                             max_seq_len=40)
    rope = get_rope(hd, hd // 2, MAX_POSITION, 10000.0, None, is_neox_style=True)
    attn = layer_module.Attention(nh, hd, hd**-0.5, nkv, layer_idx=0)
    calls = []

    def run(fused):
        def get_op(name, dev):  # the Triton op or the reference on any device
            calls.append(name)
            return getattr(attention, name if fused else f"{name}_ref")

        monkeypatch.setattr(layer_module, "get_op", get_op)
        ctx = ForwardContext(meta, [args["kv_cache"].clone()])
        q, k, v = qkv.clone().split([nh * hd, nkv * hd, nkv * hd], dim=-1)  # (T, n*hd) views, as the model passes
        return attn(q, k, v, ctx, rope=rope, positions=args["positions"]), ctx.kv_caches[0]

    got, got_cache = run(fused=True)
    expected, expected_cache = run(fused=False)
    assert calls == ["rope_paged_attention"] * 2
    assert_close(got, expected, **OUT_TOL[torch.float32])
    assert_close(got_cache, expected_cache, **CACHE_TOL[torch.float32])


def test_float32_decode_runs_unpipelined():
    """Guard: the fused decode kernel in float32 with Triton's 2-stage pipelining returned NaN on an H100 (kernels/tuning.py
    decode_launch); float32 tiles keep one stage, the 16-bit tiles stay pipelined."""
    from llmctl.kernels.tuning import decode_launch

    for block_d in (64, 128, 256):
        assert decode_launch(block_d, torch.float32).num_stages == 1
    assert decode_launch(128, torch.bfloat16).num_stages > 1
