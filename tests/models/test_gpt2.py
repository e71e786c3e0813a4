"""GPT-2 beyond the strict checks of test_consistency.py: Conv1D weights, tied head, bare hub names."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def test_structure_follows_config(bench):
    _, ours, config = bench.pair("gpt2")
    assert ours.lm_head.weight is ours.transformer.wte.weight  # tie_word_embeddings
    assert ours.transformer.h[0].mlp.c_fc.weight.shape == (4 * 64, 64)  # n_inner None -> 4 * n_embd
    assert bench.kv_cache_shape("gpt2") == (2, 4, 16)


def test_conv1d_weights_are_transposed_on_load(bench):
    from safetensors import safe_open

    _, ours, _ = bench.pair("gpt2")
    with safe_open(str(bench.checkpoint("gpt2") / "model.safetensors"), "pt") as f:
        stored = f.get_tensor("transformer.h.1.attn.c_attn.weight")  # Conv1D: (in, 3 * out)
    assert stored.shape == (64, 192)
    assert torch.equal(ours.transformer.h[1].attn.c_attn.weight, stored.t())


def test_bare_hub_checkpoint_names_load(bench):
    """The hub's original gpt2 stores GPT2Model's names (no "transformer.") plus the attn.bias mask buffers."""
    from llmctl.core.engine.loader import build_model, iter_safetensors

    _, ours, config = bench.pair("gpt2")
    weights = []
    for name, tensor in iter_safetensors(bench.checkpoint("gpt2")):
        weights.append((name.removeprefix("transformer."), tensor))
        if name.endswith(".attn.c_attn.bias"):
            prefix = name.removeprefix("transformer.").rsplit(".", 2)[0]
            weights.append((f"{prefix}.attn.bias", torch.ones(1, 1, 64, 64)))
            weights.append((f"{prefix}.attn.masked_bias", torch.tensor(-1e4)))
    assert not any(name.startswith("transformer.") for name, _ in weights)
    bare = build_model(config, harness.model_class(config), torch.float32, "cpu", weights)
    ref = dict(ours.named_parameters())
    for name, param in bare.named_parameters():
        assert torch.equal(param, ref[name]), name
