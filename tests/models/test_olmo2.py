"""OLMo 2 beyond the strict checks of test_consistency.py: q/k norms over the whole projections, post-norms only."""

from __future__ import annotations


def test_structure_follows_config(bench):
    _, olmo2, config = bench.pair("olmo2")
    layer = olmo2.model.layers[1]
    attn = layer.self_attn
    assert attn.q_norm.weight.shape == (4 * 16,) and attn.k_norm.weight.shape == (2 * 16,)  # not per head
    assert not hasattr(layer, "input_layernorm")  # no pre-norm: the checkpoint has none to load
    assert layer.post_attention_layernorm.weight.shape == layer.post_feedforward_layernorm.weight.shape == (64,)
    assert olmo2.lm_head.weight is not olmo2.model.embed_tokens.weight
    assert bench.kv_cache_shape("olmo2") == (2, 2, 16)
    assert attn.attn.sliding_window is None and config.rope_parameters["rope_theta"] == 500000.0
