"""OPT beyond the strict checks of test_consistency.py: the 350m post-norm shape, no-bias variant, position
offset, base-model checkpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from llmctl.model_defs import opt

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def test_variants_follow_config(bench):
    _, ours, config = bench.pair("opt_350m")
    decoder = ours.model.decoder
    assert decoder.project_in.weight.shape == (64, 32) and decoder.project_out.weight.shape == (32, 64)
    assert decoder.final_layer_norm is None and not decoder.layers[0].do_layer_norm_before
    assert ours.lm_head.weight is decoder.embed_tokens.weight
    assert decoder.embed_positions.weight.shape == (64 + opt.POSITION_OFFSET, 64)
    _, plain, _ = bench.pair("opt_nobias")
    layer = plain.model.decoder.layers[0]
    assert layer.self_attn.qkv_proj.bias is None and layer.fc1.bias is None
    assert layer.final_layer_norm.weight is None
    assert plain.lm_head.weight is not plain.model.decoder.embed_tokens.weight
    assert bench.kv_cache_shape("opt") == (2, 4, 16)


def test_position_offset_matters(bench):
    """Reading the position table without OPT's offset of 2 must change the logits (the test can fail)."""
    _, ours, _ = bench.pair("opt")
    prompt = harness.PROMPTS[2]
    decoder = ours.model.decoder
    original = decoder.embed_positions.weight.data.clone()
    try:
        decoder.embed_positions.weight.data.copy_(torch.roll(original, -opt.POSITION_OFFSET, dims=0))
        shifted = harness.one_shot_logits(ours, prompt)
    finally:
        decoder.embed_positions.weight.data.copy_(original)
    assert not torch.allclose(shifted, bench.hf_logits("opt", prompt), atol=1e-2)


def test_loads_checkpoint_saved_from_the_base_model(bench):
    """facebook/opt-* files name tensors from "decoder." (saved from OPTModel): they load into the same weights."""
    from safetensors.torch import load_file

    from llmctl.core.engine.loader import load_weights

    _, ours, config = bench.pair("opt")
    state = load_file(str(bench.checkpoint("opt") / "model.safetensors"))
    hub_style = [(name.removeprefix("model."), t) for name, t in state.items() if name != "lm_head.weight"]
    assert all(name.startswith("decoder.") for name, _ in hub_style)
    fresh = opt.OPTForCausalLM(config)
    load_weights(fresh, hub_style, torch.float32)
    for name, param in ours.named_parameters():
        assert torch.equal(param, dict(fresh.named_parameters())[name]), name
