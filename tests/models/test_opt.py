"""Strict consistency of OPT (pre-norm, and the 350m post-norm with project_in/out) against transformers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from llmctl.model_defs import opt

_spec = importlib.util.spec_from_file_location("f3_consistency", Path(__file__).with_name("f3_consistency.py"))
f3 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(f3)

# The architectures these tests hold to transformers; the registry test reads this list.
CONSISTENCY_ARCHITECTURES = ["OPTForCausalLM"]

_BASE = dict(
    vocab_size=320, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=1,
)  # fmt: skip
CASES = {
    # opt-125m style: layer norm before attention / MLP, final norm, tied head, relu.
    "opt": dict(_BASE, do_layer_norm_before=True),
    # opt-350m style: post-norm, no final norm, 32-dim word embeddings projected in and out.
    "opt_350m": dict(_BASE, do_layer_norm_before=False, word_embed_proj_dim=32),
    # Untied head, no bias anywhere (enable_bias=False) and norms without weights (metaseq conversions).
    "opt_nobias": dict(_BASE, enable_bias=False, layer_norm_elementwise_affine=False, tie_word_embeddings=False),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    loaded: dict[str, tuple] = {}

    def get(name: str):
        if name not in loaded:
            path = f3.make_checkpoint("OPTConfig", CASES[name], tmp_path_factory.mktemp(name), seed=len(name))
            ours, config = f3.load_ours(path, opt)
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


def test_variants_follow_config(pair):
    _, ours, config, _ = pair("opt_350m")
    decoder = ours.model.decoder
    assert decoder.project_in.weight.shape == (64, 32) and decoder.project_out.weight.shape == (32, 64)
    assert decoder.final_layer_norm is None and not decoder.layers[0].do_layer_norm_before
    assert ours.lm_head.weight is decoder.embed_tokens.weight
    assert decoder.embed_positions.weight.shape == (64 + opt.POSITION_OFFSET, 64)
    _, plain, _, _ = pair("opt_nobias")
    layer = plain.model.decoder.layers[0]
    assert layer.self_attn.qkv_proj.bias is None and layer.fc1.bias is None
    assert layer.final_layer_norm.weight is None
    assert plain.lm_head.weight is not plain.model.decoder.embed_tokens.weight
    assert opt.kv_cache_shape(config) == (2, 4, 16)


def test_position_offset_matters(pair, kit):
    """Reading the position table without OPT's offset of 2 must change the logits (the test can fail)."""
    hf, ours, config, _ = pair("opt")
    prompt = f3.PROMPTS[2]
    drv = f3.driver(kit, ours, config, use_cache=False)
    decoder = ours.model.decoder
    original = decoder.embed_positions.weight.data.clone()
    try:
        decoder.embed_positions.weight.data.copy_(torch.roll(original, -opt.POSITION_OFFSET, dims=0))
        with torch.inference_mode():
            shifted = ours.compute_logits(drv.forward([(kit.Seq(tokens=list(prompt), prompt_len=len(prompt)),
                                                        len(prompt))]))
    finally:
        decoder.embed_positions.weight.data.copy_(original)
    assert not torch.allclose(shifted, f3.hf_logits(hf, prompt), atol=1e-2)


def test_loads_checkpoint_saved_from_the_base_model(pair):
    """facebook/opt-* files name tensors from "decoder." (saved from OPTModel): they load into the same weights."""
    from safetensors.torch import load_file

    from llmctl.core.engine.loader import load_weights

    _, ours, config, path = pair("opt")
    state = load_file(str(path / "model.safetensors"))
    hub_style = [(name.removeprefix("model."), t) for name, t in state.items() if name != "lm_head.weight"]
    assert all(name.startswith("decoder.") for name, _ in hub_style)
    fresh = opt.OPTForCausalLM(config)
    load_weights(fresh, hub_style, torch.float32)
    for name, param in ours.named_parameters():
        assert torch.equal(param, dict(fresh.named_parameters())[name]), name
