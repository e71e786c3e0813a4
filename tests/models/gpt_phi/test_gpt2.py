"""Strict consistency of GPT-2 (Conv1D weights, learned positions, tied head) against transformers."""

from __future__ import annotations

import pytest
import torch

# The architectures these tests hold to transformers; the registry test reads this list.
CONSISTENCY_ARCHITECTURES = ["GPT2LMHeadModel"]
NAMES = ["gpt2"]


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
    f2.checks.dummy_weights_run("gpt2")


def test_structure_follows_config(f2):
    _, ours, config = f2.pair("gpt2")
    assert ours.lm_head.weight is ours.transformer.wte.weight  # tie_word_embeddings
    assert ours.transformer.h[0].mlp.c_fc.weight.shape == (4 * 64, 64)  # n_inner None -> 4 * n_embd
    assert f2.checks.kv_cache_shape("gpt2") == (2, 4, 16)


def test_conv1d_weights_are_transposed_on_load(f2):
    from safetensors import safe_open

    _, ours, _ = f2.pair("gpt2")
    with safe_open(str(f2.checkpoint("gpt2") / "model.safetensors"), "pt") as f:
        stored = f.get_tensor("transformer.h.1.attn.c_attn.weight")  # Conv1D: (in, 3 * out)
    assert stored.shape == (64, 192)
    assert torch.equal(ours.transformer.h[1].attn.c_attn.weight, stored.t())


def test_bare_hub_checkpoint_names_load(f2):
    """The hub's original gpt2 stores GPT2Model's names (no "transformer.") plus the attn.bias mask buffers."""
    from llmctl.core.engine.loader import build_model, iter_safetensors

    _, ours, config = f2.pair("gpt2")
    weights = []
    for name, tensor in iter_safetensors(f2.checkpoint("gpt2")):
        weights.append((name.removeprefix("transformer."), tensor))
        if name.endswith(".attn.c_attn.bias"):
            prefix = name.removeprefix("transformer.").rsplit(".", 2)[0]
            weights.append((f"{prefix}.attn.bias", torch.ones(1, 1, 64, 64)))
            weights.append((f"{prefix}.attn.masked_bias", torch.tensor(-1e4)))
    assert not any(name.startswith("transformer.") for name, _ in weights)
    bare = build_model(config, f2.model_class(config), torch.float32, "cpu", weights)
    ref = dict(ours.named_parameters())
    for name, param in bare.named_parameters():
        assert torch.equal(param, ref[name]), name
