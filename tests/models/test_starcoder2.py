"""StarCoder2 beyond the strict checks of test_consistency.py: the window on every layer, biases, tying by default."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def test_sliding_window_changes_the_output(bench):
    """The window (7) is shorter than the first prompt, so dropping it must change the logits past position 7."""
    _, ours, _ = bench.pair("starcoder2")
    prompt = harness.PROMPTS[0]
    windows = [layer.self_attn.attn.sliding_window for layer in ours.model.layers]
    assert windows == [7, 7]
    with_window = harness.one_shot_logits(ours, prompt)
    try:
        for layer in ours.model.layers:
            layer.self_attn.attn.sliding_window = None
        without = harness.one_shot_logits(ours, prompt)
    finally:
        for layer, window in zip(ours.model.layers, windows):
            layer.self_attn.attn.sliding_window = window
    assert torch.equal(with_window[:7], without[:7])
    assert not torch.allclose(with_window[7:], without[7:], atol=1e-3)


def test_ties_when_config_is_silent_and_biases_follow_use_bias(bench):
    path = bench.checkpoint("starcoder2")
    assert "tie_word_embeddings" not in json.loads((path / "config.json").read_text())  # as starcoder2-3b's
    _, tied, _ = bench.pair("starcoder2")
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    layer = tied.model.layers[0]
    assert layer.self_attn.qkv_proj.weight.shape == ((4 + 2 * 2) * 16, 64)
    assert all(m.bias is not None for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.c_fc))
    assert bench.kv_cache_shape("starcoder2") == (2, 2, 16)
    _, plain, _ = bench.pair("starcoder2_nobias")
    assert plain.lm_head.weight is not plain.model.embed_tokens.weight
    layer = plain.model.layers[0]
    assert all(m.bias is None for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.c_fc,
                                         layer.mlp.c_proj))
    assert layer.input_layernorm.bias is not None  # LayerNorm keeps its bias either way
    assert [la.self_attn.attn.sliding_window for la in plain.model.layers] == [None, None]
