"""Falcon beyond the strict checks of test_consistency.py: the multi-query cache and the decoder variants."""

from __future__ import annotations

from llmctl.model_defs import falcon


def test_kv_cache_shape_follows_the_attention(bench):
    """multi_query configs keep num_kv_heads = all heads; the cache must hold the one k/v head actually used."""
    expected = {"falcon_7b": 1, "falcon_40b": 2, "falcon_1ln": 1, "falcon_rw": 4}
    for name, kv_heads in expected.items():
        _, ours, _ = bench.pair(name)
        assert bench.kv_cache_shape(name) == (2, kv_heads, 16)  # and the engine's kv_cache_spec agrees
        assert ours.transformer.h[0].self_attention.attn.num_kv_heads == kv_heads


def test_variants_follow_config(bench):
    _, ours, _ = bench.pair("falcon_40b")
    layer = ours.transformer.h[0]
    assert hasattr(layer, "ln_attn") and hasattr(layer, "ln_mlp") and not hasattr(layer, "input_layernorm")
    assert ours.lm_head.weight is not ours.transformer.word_embeddings.weight
    assert layer.self_attention.rotary_emb is not None and layer.self_attention.attn.alibi_slopes is None
    _, rw, _ = bench.pair("falcon_rw")
    attn = rw.transformer.h[0].self_attention
    assert attn.rotary_emb is None and attn.attn.alibi_slopes is not None
    assert hasattr(rw.transformer.h[0], "post_attention_layernorm")
    _, one_ln, _ = bench.pair("falcon_1ln")
    layer = one_ln.transformer.h[0]
    assert not hasattr(layer, "ln_attn") and layer.self_attention.dense.bias is not None


def test_llm_sizes_the_cache_for_multi_query(bench):
    """Through the real engine: the cache takes kv_cache_shape's one k/v head (test_consistency runs generate)."""
    from llmctl import LLM

    llm = LLM(str(bench.checkpoint("falcon_7b")), dtype="float32", device="cpu", skip_tokenizer_init=True,
              block_size=4, num_kv_blocks=64)
    assert type(llm.llm_engine.runner.model) is falcon.FalconForCausalLM
    assert llm.llm_engine.runner.kv_caches[0].shape[-2:] == (1, 16)  # (2, blocks, block_size, kv_heads, head_dim)
