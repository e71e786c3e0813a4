"""BLOOM beyond the strict checks of test_consistency.py: ALiBi slopes, the variants, base-model checkpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from llmctl.model_defs import bloom
from llmctl.model_defs.layers.alibi import bloom_alibi_slopes

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def test_alibi_slopes_match_transformers():
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    for num_heads in (1, 3, 4, 6, 12, 16, 32, 112):  # bloom-176b has 112 heads
        torch.testing.assert_close(bloom_alibi_slopes(num_heads), _get_alibi_slopes(num_heads, "cpu"), rtol=0, atol=0)


def test_alibi_matters(bench):
    """Without ALiBi a BLOOM layer has no position information: dropping it must change the logits."""
    _, ours, _ = bench.pair("bloom_6heads")
    prompt = harness.PROMPTS[0]
    attns = [block.self_attention.attn for block in ours.transformer.h]
    slopes = [a.alibi_slopes for a in attns]
    try:
        for a in attns:
            a.alibi_slopes = None
        without = harness.one_shot_logits(ours, prompt)
    finally:
        for a, s in zip(attns, slopes):
            a.alibi_slopes = s
    assert not torch.allclose(without, bench.hf_logits("bloom_6heads", prompt), atol=1e-2)


def test_variants_follow_config(bench):
    _, tied, config = bench.pair("bloom")
    assert tied.lm_head.weight is tied.transformer.word_embeddings.weight
    assert tied.kv_cache_shape() == (2, 4, 16)
    _, untied, _ = bench.pair("bloom_6heads")
    assert untied.lm_head.weight is not untied.transformer.word_embeddings.weight
    assert untied.transformer.h[0].residual_post_norm


def test_loads_checkpoint_saved_from_the_base_model(bench):
    """bigscience/bloom* files name tensors without "transformer." (saved from BloomModel): they load the same."""
    from safetensors.torch import load_file

    from llmctl.core.engine.loader import load_weights

    _, ours, config = bench.pair("bloom")
    state = load_file(str(bench.checkpoint("bloom") / "model.safetensors"))
    hub_style = [(name.removeprefix("transformer."), t) for name, t in state.items() if name != "lm_head.weight"]
    assert all(name.startswith(("h.", "word_embeddings", "ln_f")) for name, _ in hub_style)
    fresh = bloom.BloomForCausalLM(config)
    load_weights(fresh, hub_style, torch.float32)
    for name, param in ours.named_parameters():
        assert torch.equal(param, dict(fresh.named_parameters())[name]), name
