"""Strict consistency of GPT-J (interleaved rotary on rotary_dim, parallel attention + MLP) against transformers."""

from __future__ import annotations

import pytest

# The architectures these tests hold to transformers; the registry test reads this list.
CONSISTENCY_ARCHITECTURES = ["GPTJForCausalLM"]
NAMES = ["gptj"]


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
    f2.checks.dummy_weights_run("gptj")


def test_structure_follows_config(f2):
    _, ours, _ = f2.pair("gptj")
    rope = ours.transformer.h[0].attn.rotary_emb
    assert (rope.rotary_dim, rope.head_size, rope.is_neox_style) == (8, 16, False)
    assert ours.lm_head.bias is not None and ours.lm_head.weight is not ours.transformer.wte.weight
    assert f2.checks.kv_cache_shape("gptj") == (2, 4, 16)


def test_rotary_style_matters(f2):
    """The check catches the wrong rotary layout: neox-style (half split) rotation must not pass for GPT-J."""
    _, ours, _ = f2.pair("gptj")
    rope = ours.transformer.h[0].attn.rotary_emb  # shared by every layer (and cached by get_rope)
    rope.is_neox_style = True
    try:
        with pytest.raises(AssertionError):
            f2.checks.prefill("gptj", use_cache=True)
    finally:
        rope.is_neox_style = False
