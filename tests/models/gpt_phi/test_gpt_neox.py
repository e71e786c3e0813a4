"""Strict consistency of GPT-NeoX (partial rotary, parallel and sequential residual, per-head fused qkv)."""

from __future__ import annotations

import pytest

# The architectures these tests hold to transformers; the registry test reads this list.
CONSISTENCY_ARCHITECTURES = ["GPTNeoXForCausalLM"]
NAMES = ["neox_parallel", "neox_sequential"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("use_cache", [True, False], ids=["paged", "no-cache"])
def test_prefill_logits_match_transformers(f2, name, use_cache):
    f2.checks.prefill(name, use_cache)


@pytest.mark.parametrize("name", NAMES)
def test_chunked_prefill_logits_match_transformers(f2, name):
    f2.checks.chunked_prefill(name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk_size", [None, 4], ids=["full-prefill", "chunked-prefill"])
def test_greedy_matches_transformers_generate(f2, name, chunk_size):
    f2.checks.greedy(name, chunk_size)


def test_dummy_weights_run(f2):
    f2.checks.dummy_weights_run("neox_parallel")


def test_structure_follows_config(f2):
    _, parallel, _ = f2.pair("neox_parallel")
    _, sequential, _ = f2.pair("neox_sequential")
    assert [layer.use_parallel_residual for layer in parallel.gpt_neox.layers] == [True, True]
    assert [layer.use_parallel_residual for layer in sequential.gpt_neox.layers] == [False, False]
    assert parallel.gpt_neox.layers[0].attention.rotary_emb.rotary_dim == 4  # rotary_pct 0.25 of 16
    assert sequential.gpt_neox.layers[0].attention.rotary_emb.rotary_dim == 8  # rotary_pct 0.5
    assert sequential.gpt_neox.layers[0].attention.query_key_value.bias is None  # attention_bias False
    assert sequential.embed_out.weight is sequential.gpt_neox.embed_in.weight  # tied
    assert parallel.embed_out.weight is not parallel.gpt_neox.embed_in.weight
    assert f2.checks.kv_cache_shape("neox_parallel") == (2, 4, 16)


def test_per_head_qkv_layout_matters(f2, monkeypatch):
    """Loading query_key_value without regrouping its per-head (nh, 3, hd) rows must fail the check."""
    from llmctl.model_defs.layers.layout_linear import HeadInterleavedQKVLinear

    monkeypatch.setattr(HeadInterleavedQKVLinear, "from_checkpoint_layout", lambda self, name, tensor: tensor)
    broken, _ = f2.load_ours(f2.checkpoint("neox_parallel"))
    with pytest.raises(AssertionError):
        f2.checks.prefill("neox_parallel", use_cache=True, model=broken)
