"""Phi-1/1.5/2 beyond the strict checks of test_consistency.py: partial rotary, optional q/k LayerNorm."""

from __future__ import annotations


def test_structure_follows_config(bench):
    _, phi, _ = bench.pair("phi")
    attn = phi.model.layers[0].self_attn
    assert attn.rotary_emb.rotary_dim == 8 and not attn.qk_layernorm  # partial_rotary_factor 0.5 of 16
    assert phi.lm_head.bias is not None
    assert bench.kv_cache_shape("phi") == (2, 4, 16)
    _, gqa, _ = bench.pair("phi_qk_gqa")
    attn = gqa.model.layers[1].self_attn
    assert attn.qk_layernorm and attn.q_layernorm.weight.shape == (16,)
    assert attn.rotary_emb.rotary_dim == 12  # partial_rotary_factor 0.75
    assert attn.qkv_proj.weight.shape == ((4 + 2 * 2) * 16, 64)
    assert bench.kv_cache_shape("phi_qk_gqa") == (2, 2, 16)
