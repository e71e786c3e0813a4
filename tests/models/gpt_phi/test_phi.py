"""Strict consistency of Phi-1/1.5/2 (partial rotary, parallel block, optional q/k LayerNorm) against transformers."""

from __future__ import annotations

import pytest

# The architectures these tests hold to transformers; the registry test reads this list.
CONSISTENCY_ARCHITECTURES = ["PhiForCausalLM"]
NAMES = ["phi", "phi_qk_gqa"]


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
    f2.checks.dummy_weights_run("phi_qk_gqa")


def test_structure_follows_config(f2):
    _, phi, _ = f2.pair("phi")
    attn = phi.model.layers[0].self_attn
    assert attn.rotary_emb.rotary_dim == 8 and not attn.qk_layernorm  # partial_rotary_factor 0.5 of 16
    assert phi.lm_head.bias is not None
    assert f2.checks.kv_cache_shape("phi") == (2, 4, 16)
    _, gqa, _ = f2.pair("phi_qk_gqa")
    attn = gqa.model.layers[1].self_attn
    assert attn.qk_layernorm and attn.q_layernorm.weight.shape == (16,)
    assert attn.rotary_emb.rotary_dim == 12  # partial_rotary_factor 0.75
    assert attn.qkv_proj.weight.shape == ((4 + 2 * 2) * 16, 64)
    assert f2.checks.kv_cache_shape("phi_qk_gqa") == (2, 2, 16)
