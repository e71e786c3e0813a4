"""Strict consistency of BLOOM (ALiBi, per-head fused query_key_value) against transformers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from llmctl.model_defs import bloom
from llmctl.model_defs.layers.alibi import bloom_alibi_slopes

_spec = importlib.util.spec_from_file_location("f3_consistency", Path(__file__).with_name("f3_consistency.py"))
f3 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(f3)

# The architectures these tests hold to transformers; the registry test reads this list.
CONSISTENCY_ARCHITECTURES = ["BloomForCausalLM"]

_BASE = dict(vocab_size=320, n_layer=2, layer_norm_epsilon=1e-5, bos_token_id=None, eos_token_id=None, pad_token_id=3)
CASES = {
    # bloom-560m style: 4 heads (power-of-two slopes), tied head.
    "bloom": dict(_BASE, hidden_size=64, n_head=4),
    # 6 heads take the extra odd-power slopes; residual from the normalised input; untied head.
    "bloom_6heads": dict(
        _BASE, hidden_size=48, n_head=6, apply_residual_connection_post_layernorm=True, tie_word_embeddings=False
    ),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    loaded: dict[str, tuple] = {}

    def get(name: str):
        if name not in loaded:
            path = f3.make_checkpoint("BloomConfig", CASES[name], tmp_path_factory.mktemp(name), seed=len(name))
            ours, config = f3.load_ours(path, bloom)
            loaded[name] = (f3.load_hf(path), ours, config, path)
        return loaded[name]

    return get


_HF_GREEDY: dict = {}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("use_cache", [True, False], ids=["paged", "no-cache"])
def test_prefill_logits_match_transformers(pair, kit, case, use_cache):
    hf, ours, config, _ = pair(case)
    f3.check_prefill(kit, hf, ours, config, use_cache)


@pytest.mark.parametrize("case", sorted(CASES))
def test_chunked_prefill_logits_match_transformers(pair, kit, case):
    hf, ours, config, _ = pair(case)
    f3.check_chunked_prefill(kit, hf, ours, config)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk_size", [None, 4], ids=["full-prefill", "chunked-prefill"])
def test_greedy_matches_transformers_generate(pair, kit, case, chunk_size):
    hf, ours, config, _ = pair(case)
    f3.check_greedy(kit, hf, ours, config, chunk_size, _HF_GREEDY)


def test_alibi_slopes_match_transformers():
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    for num_heads in (1, 3, 4, 6, 12, 16, 32, 112):  # bloom-176b has 112 heads
        torch.testing.assert_close(bloom_alibi_slopes(num_heads), _get_alibi_slopes(num_heads, "cpu"), rtol=0, atol=0)


def test_alibi_matters(pair, kit):
    """Without ALiBi a BLOOM layer has no position information: dropping it must change the logits."""
    hf, ours, config, _ = pair("bloom_6heads")
    prompt = f3.PROMPTS[0]
    drv = f3.driver(kit, ours, config, use_cache=False)
    attns = [block.self_attention.attn for block in ours.transformer.h]
    slopes = [a.alibi_slopes for a in attns]
    try:
        for a in attns:
            a.alibi_slopes = None
        with torch.inference_mode():
            seq = kit.Seq(tokens=list(prompt), prompt_len=len(prompt))
            without = ours.compute_logits(drv.forward([(seq, len(prompt))]))
    finally:
        for a, s in zip(attns, slopes):
            a.alibi_slopes = s
    assert not torch.allclose(without, f3.hf_logits(hf, prompt), atol=1e-2)


def test_variants_follow_config(pair):
    _, tied, config, _ = pair("bloom")
    assert tied.lm_head.weight is tied.transformer.word_embeddings.weight
    assert bloom.kv_cache_shape(config) == (2, 4, 16)
    _, untied, _, _ = pair("bloom_6heads")
    assert untied.lm_head.weight is not untied.transformer.word_embeddings.weight
    assert untied.transformer.h[0].residual_post_norm


def test_loads_checkpoint_saved_from_the_base_model(pair):
    """bigscience/bloom* files name tensors without "transformer." (saved from BloomModel): they load the same."""
    from safetensors.torch import load_file

    from llmctl.core.engine.loader import load_weights

    _, ours, config, path = pair("bloom")
    state = load_file(str(path / "model.safetensors"))
    hub_style = [(name.removeprefix("transformer."), t) for name, t in state.items() if name != "lm_head.weight"]
    assert all(name.startswith(("h.", "word_embeddings", "ln_f")) for name, _ in hub_style)
    fresh = bloom.BloomForCausalLM(config)
    load_weights(fresh, hub_style, torch.float32)
    for name, param in ours.named_parameters():
        assert torch.equal(param, dict(fresh.named_parameters())[name]), name
