"""The Llama family (Llama, Mistral, Qwen2, Qwen3) beyond the strict checks of test_consistency.py: what each
variant builds from its config."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from llmctl.model_defs import llama

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def test_sliding_window_changes_mistral_output(bench):
    """Mistral's window (7) is shorter than the first prompt, so dropping it must change the logits."""
    _, ours, _ = bench.pair("mistral")
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
    assert torch.equal(with_window[:7], without[:7])  # positions < window see everything either way
    assert not torch.allclose(with_window[7:], without[7:], atol=1e-3)


def test_variants_follow_config(bench):
    _, qwen3, _ = bench.pair("qwen3")
    assert [layer.self_attn.attn.sliding_window for layer in qwen3.model.layers] == [None, 6]
    assert hasattr(qwen3.model.layers[0].self_attn, "q_norm")
    _, qwen2, _ = bench.pair("qwen2")
    attn = qwen2.model.layers[0].self_attn
    assert attn.qkv_proj.bias is not None and attn.o_proj.bias is None
    assert qwen2.lm_head.weight is qwen2.model.embed_tokens.weight  # tied
    _, llama3, _ = bench.pair("llama3")
    assert llama3.lm_head.weight is not llama3.model.embed_tokens.weight
    assert llama3.model.layers[0].self_attn.qkv_proj.weight.shape == (4 * 32 + 2 * 2 * 32, 64)
    assert bench.kv_cache_shape("llama3") == (2, 2, 32)
    assert bench.kv_cache_shape("qwen3") == (2, 2, 32)


def test_exported_classes_cover_the_architectures():
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        cls = getattr(llama, arch)
        assert cls.weights_mapper.packed["q_proj"] == ("qkv_proj", "q")
        assert cls.weights_mapper.packed["up_proj"] == ("gate_up_proj", 1)
