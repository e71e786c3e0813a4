"""The weight loader: safetensors (single and sharded), .bin through weights_only, fused shards, errors, dummy."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmctl.core.engine.loader import build_model, iter_checkpoint, iter_safetensors, iter_torch_bin, load_weights
from llmctl.core.errors import ModelReadError, WeightLoadError
from llmctl.model_defs import llama

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def _config(path):
    import transformers

    return transformers.AutoConfig.from_pretrained(path)


def _state(path) -> dict[str, torch.Tensor]:
    return dict(iter_safetensors(path))


def _build(config, weights, dtype=torch.float32):
    return build_model(config, getattr(llama, config.architectures[0]), dtype, "cpu", weights)


@pytest.fixture(scope="module")
def _tiny(bench):
    path = bench.checkpoint("llama3")
    return path, _config(path), _state(path)


@pytest.fixture
def tiny(_tiny):
    """The untied llama3 checkpoint: (folder, config, a fresh dict of its tensors for the test to edit)."""
    path, config, state = _tiny
    return path, config, dict(state)


def test_fused_shards_hold_the_checkpoint_tensors(tiny):
    path, config, state = tiny
    model = _build(config, iter_safetensors(path))
    attn = model.model.layers[1].self_attn
    q, k, v = attn.qkv_proj.weight.split([attn.q_size, attn.kv_size, attn.kv_size])
    assert torch.equal(q, state["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(k, state["model.layers.1.self_attn.k_proj.weight"])
    assert torch.equal(v, state["model.layers.1.self_attn.v_proj.weight"])
    gate, up = model.model.layers[0].mlp.gate_up_proj.weight.chunk(2)
    assert torch.equal(gate, state["model.layers.0.mlp.gate_proj.weight"])
    assert torch.equal(up, state["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(model.lm_head.weight, state["lm_head.weight"])


def test_sharded_safetensors_load_like_one_file(tiny, tmp_path):
    import transformers

    path, config, state = tiny
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    sharded = dict(iter_safetensors(tmp_path))
    assert sharded.keys() == state.keys()
    one = _build(config, iter_safetensors(path))
    many = _build(config, iter_safetensors(tmp_path))
    for (name, a), (_, b) in zip(one.named_parameters(), many.named_parameters()):
        assert torch.equal(a, b), name


def test_missing_shard_is_named(tiny):
    path, config, state = tiny
    del state["model.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(WeightLoadError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight"):
        _build(config, state.items())


def test_missing_untied_lm_head_is_named(tiny):
    path, config, state = tiny
    del state["lm_head.weight"]
    with pytest.raises(WeightLoadError, match=r"lm_head\.weight"):
        _build(config, state.items())


def test_unexpected_tensor_is_named(tiny):
    path, config, state = tiny
    state["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(WeightLoadError, match=r"model\.layers\.0\.mlp\.extra_proj\.weight"):
        _build(config, state.items())


def test_misshapen_tensor_is_named(tiny):
    path, config, state = tiny
    name = "model.layers.1.self_attn.v_proj.weight"
    state[name] = state[name][:-1]
    with pytest.raises(WeightLoadError, match=r"model\.layers\.1\.self_attn\.v_proj\.weight.*shape"):
        _build(config, state.items())


def test_rotary_inv_freq_and_tied_lm_head_copy_are_accepted(bench):
    path = bench.checkpoint("llama_tied")
    config = _config(path)
    state = _state(path)
    assert "lm_head.weight" not in state  # transformers saves a tied head once
    reference = _build(config, state.items())
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old Llama checkpoints carry it
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    model = _build(config, state.items())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, reference.lm_head.weight)


def test_load_weights_returns_filled_names(tiny):
    path, config, _ = tiny
    model = _build(config, None)
    names = load_weights(model, iter_safetensors(path), torch.float32)
    assert names == {name for name, _ in model.named_parameters()}
    assert "model.layers.0.self_attn.qkv_proj.weight" in names


def test_dtype_is_converted_on_the_way(tiny):
    path, config, state = tiny
    model = _build(config, iter_safetensors(path), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.equal(model.model.embed_tokens.weight, state["model.embed_tokens.weight"].to(torch.bfloat16))


def test_torch_bin_loads_through_weights_only(tiny, tmp_path):
    path, config, state = tiny
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = dict(iter_torch_bin(tmp_path))
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert dict(iter_checkpoint(tmp_path)).keys() == state.keys()  # no safetensors: falls back to .bin
    via_bin = _build(config, iter_torch_bin(tmp_path))
    via_st = _build(config, iter_safetensors(path))
    prompt = [1, 2, 3]
    torch.testing.assert_close(harness.one_shot_logits(via_bin, prompt), harness.one_shot_logits(via_st, prompt))


class _NotATensor:
    pass


def test_torch_bin_refuses_pickled_objects(tmp_path):
    torch.save({"weight": _NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelReadError):
        dict(iter_torch_bin(tmp_path))


def test_missing_files_raise_model_read_error(tmp_path):
    with pytest.raises(ModelReadError):
        dict(iter_safetensors(tmp_path))
    with pytest.raises(ModelReadError):
        dict(iter_torch_bin(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(ModelReadError, match="gone.safetensors"):
        dict(iter_safetensors(tmp_path))


def test_dummy_load_needs_no_checkpoint(tiny):
    _, config, _ = tiny
    model = _build(config, None)
    params = dict(model.named_parameters())
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in params.values())
    assert torch.equal(params["model.norm.weight"], torch.ones_like(params["model.norm.weight"]))
    assert params["model.layers.0.self_attn.qkv_proj.weight"].std() > 0
    logits = harness.one_shot_logits(model, [5, 6, 7, 8])
    assert logits.shape == (4, config.vocab_size) and torch.isfinite(logits).all()


def test_safetensors_roundtrip_matches_file(tiny, tmp_path):
    """iter_safetensors yields exactly what a file holds (names, values), single-file layout."""
    _, _, state = tiny
    save_file({k: v.contiguous() for k, v in list(state.items())[:3]}, tmp_path / "model.safetensors")
    ours = dict(iter_safetensors(tmp_path))
    theirs = load_file(tmp_path / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
