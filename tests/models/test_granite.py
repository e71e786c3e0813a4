"""Granite beyond the strict checks of test_consistency.py: each of its four multipliers is read and matters."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def _targets(model):
    """(object, attribute, neutral value) for each multiplier the Granite variant applies."""
    layers = list(model.model.layers)
    return {
        "embedding_multiplier": [(model.model, "embedding_multiplier", None)],
        "residual_multiplier": [(layer, "residual_multiplier", None) for layer in layers],
        "attention_multiplier": [(layer.self_attn.attn, "scale", layer.self_attn.head_dim**-0.5) for layer in layers],
        "logits_scaling": [(model, "logits_scaling", None)],
    }


def test_multipliers_follow_config(bench):
    _, granite, config = bench.pair("granite")
    assert granite.model.embedding_multiplier == config.embedding_multiplier == 12.0
    assert [layer.residual_multiplier for layer in granite.model.layers] == [0.22, 0.22]
    assert [layer.self_attn.attn.scale for layer in granite.model.layers] == [0.0625, 0.0625]
    assert granite.logits_scaling == 8.0
    assert granite.lm_head.weight is granite.model.embed_tokens.weight  # tie_word_embeddings
    _, llama, _ = bench.pair("llama_tied")  # plain Llama applies none of them
    assert llama.logits_scaling is None and llama.model.embedding_multiplier is None
    assert llama.model.layers[0].residual_multiplier is None


@pytest.mark.parametrize("name", ["embedding_multiplier", "residual_multiplier", "attention_multiplier",
                                  "logits_scaling"])
def test_each_multiplier_changes_the_logits(bench, name):
    _, granite, _ = bench.pair("granite")
    prompt = harness.PROMPTS[0]
    reference = harness.one_shot_logits(granite, prompt)
    targets = _targets(granite)[name]
    saved = [getattr(obj, attr) for obj, attr, _ in targets]
    try:
        for obj, attr, neutral in targets:
            setattr(obj, attr, neutral)
        without = harness.one_shot_logits(granite, prompt)
    finally:
        for (obj, attr, _), value in zip(targets, saved):
            setattr(obj, attr, value)
    assert not torch.allclose(reference, without, atol=1e-3), name
