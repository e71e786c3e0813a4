"""GPT-J beyond the strict checks of test_consistency.py: interleaved rotary on rotary_dim, lm_head bias."""

from __future__ import annotations

import pytest


def test_structure_follows_config(bench):
    _, ours, _ = bench.pair("gptj")
    rope = ours.transformer.h[0].attn.rotary_emb
    assert (rope.rotary_dim, rope.head_size, rope.is_neox_style) == (8, 16, False)
    assert ours.lm_head.bias is not None and ours.lm_head.weight is not ours.transformer.wte.weight
    assert bench.kv_cache_shape("gptj") == (2, 4, 16)


def test_rotary_style_matters(bench):
    """The check catches the wrong rotary layout: neox-style (half split) rotation must not pass for GPT-J."""
    _, ours, _ = bench.pair("gptj")
    rope = ours.transformer.h[0].attn.rotary_emb  # shared by every layer (and cached by get_rope)
    rope.is_neox_style = True
    try:
        with pytest.raises(AssertionError):
            bench.check_prefill("gptj", use_cache=True)
    finally:
        rope.is_neox_style = False
