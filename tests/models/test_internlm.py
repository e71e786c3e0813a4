"""InternLM and InternLM2 beyond the strict checks of test_consistency.py: wqkv's grouped rows, `check` without
remote code, parameter counts from config, InternLM's `rotary` dict, and a tokenizer that needs the repo's code."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from llmctl.core.errors import UnsupportedModelError

# --import-mode=importlib and no __init__.py: the helpers are loaded by path.
_spec = importlib.util.spec_from_file_location("remote_layouts", Path(__file__).with_name("remote_layouts.py"))
remote_layouts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(remote_layouts)

INTERNLM_CASES = ["internlm", "internlm2", "internlm2_bias"]


@pytest.mark.parametrize(("heads", "kv_heads"), [(8, 2), (6, 3), (4, 4), (4, 1)])
def test_wqkv_grouped_rows_are_relaid_to_q_k_v(heads, kv_heads):
    from llmctl.model_defs.layers.layout_linear import KVGroupedQKVLinear

    head_dim, hidden = 3, 5
    q = torch.randn(heads * head_dim, hidden)
    k, v = torch.randn(kv_heads * head_dim, hidden), torch.randn(kv_heads * head_dim, hidden)
    layer = KVGroupedQKVLinear(hidden, head_dim, heads, kv_heads, bias=True)
    packed = remote_layouts.pack_wqkv(q, k, v, kv_heads, head_dim)
    assert torch.equal(layer.from_checkpoint_layout("weight", packed), torch.cat([q, k, v]))
    bias = [t[:, 0].contiguous() for t in (q, k, v)]
    assert torch.equal(layer.from_checkpoint_layout("bias", remote_layouts.pack_wqkv(*bias, kv_heads, head_dim)),
                       torch.cat(bias))
    # Only one kv head makes the grouped layout q|k|v already; any other count is a real re-lay.
    assert torch.equal(packed, torch.cat([q, k, v])) == (kv_heads == 1)


def test_wqkv_is_loaded_whole_and_regrouped(bench):
    """The checkpoint has one wqkv per layer, no q/k/v tensors; the model's fused rows are the source's q | k | v."""
    path = bench.checkpoint("internlm2_bias")
    state = load_file(str(path / "model.safetensors"))
    assert not any("q_proj" in name or "k_proj" in name for name in state)
    reference = load_file(str(bench.reference("internlm2_bias") / "model.safetensors"))
    _, ours, _ = bench.pair("internlm2_bias")
    qkv = ours.model.layers[1].self_attn.qkv_proj
    expected = [reference[f"model.layers.1.self_attn.{p}_proj.{w}"] for w in ("weight", "bias") for p in "qkv"]
    torch.testing.assert_close(qkv.weight, torch.cat(expected[:3]), rtol=0, atol=0)
    torch.testing.assert_close(qkv.bias, torch.cat(expected[3:]), rtol=0, atol=0)
    assert ours.model.layers[0].self_attn.o_proj.bias is not None


@pytest.mark.parametrize("name", INTERNLM_CASES)
def test_check_says_native_and_counts_from_config(bench, name):
    """`check` runs no repo code and asks for no flag; the config formula counts exactly the checkpoint's tensors."""
    from typer.testing import CliRunner

    from llmctl.cli.app import app
    from llmctl.core.estimate import count_parameters
    from llmctl.core.spec import spec_from_config

    path = bench.checkpoint(name)
    config = json.loads((path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_internlm")  # as the hub repos
    result = CliRunner().invoke(app, ["check", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["implementation"] == "native" and verdict["supported"] is True
    assert verdict["needs_trust_remote_code"] is False and verdict["verification"] == "strict"
    spec = spec_from_config(config)
    assert spec.rope_theta == {"internlm": 50000.0}.get(name, 1000000.0)  # internlm: from its `rotary` dict
    in_checkpoint = sum(t.numel() for t in load_file(str(path / "model.safetensors")).values())
    assert count_parameters(spec) == in_checkpoint
    _, ours, _ = bench.pair(name)
    assert sum(p.numel() for p in ours.parameters()) == in_checkpoint


def test_config_is_read_with_the_repo_config_defaults(bench):
    """internlm's config.json has no "bias" and no num_key_value_heads: InternLMConfig's defaults (bias on)."""
    from llmctl.core.engine.model_source import load_hf_config

    config = load_hf_config(bench.checkpoint("internlm"))
    assert config.bias is True and config.rms_norm_eps == 1e-5 and config.to_dict()["model_type"] == "internlm"
    _, ours, _ = bench.pair("internlm")
    attention = ours.model.layers[0].self_attn
    assert attention.qkv_proj.bias is not None and attention.o_proj.bias is not None
    assert load_hf_config(bench.checkpoint("internlm2")).bias is False


def test_a_converted_checkpoint_without_auto_map_still_loads_natively(bench, tmp_path):
    from llmctl.core.engine.model_source import load_hf_config, select_model_class
    from llmctl.model_defs.internlm import InternLM2ForCausalLM

    path = tmp_path / "internlm2"
    shutil.copytree(bench.checkpoint("internlm2"), path)
    config = json.loads((path / "config.json").read_text())
    del config["auto_map"]
    (path / "config.json").write_text(json.dumps(config))
    assert select_model_class(load_hf_config(path)) is InternLM2ForCausalLM


def test_rotary_dict_becomes_the_rope():
    from llmctl.model_defs.internlm import rope_config_of_rotary

    origin = SimpleNamespace(rotary={"base": 20000, "type": "origin"})
    assert rope_config_of_rotary(origin).rope_parameters == {"rope_type": "default", "rope_theta": 20000.0}
    assert not hasattr(origin, "rope_parameters")  # the model's copy changes, not the shared config
    dynamic = rope_config_of_rotary(SimpleNamespace(rotary={"base": 10000, "type": "dynamic", "scaling_factor": 2.0}))
    assert dynamic.rope_scaling == {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    assert rope_config_of_rotary(SimpleNamespace()).rope_scaling["factor"] == 1.0  # InternLMConfig's default
    scaled = SimpleNamespace(rope_scaling={"rope_type": "linear", "factor": 2.0}, rotary={"base": 1})
    assert rope_config_of_rotary(scaled) is scaled
    with pytest.raises(UnsupportedModelError, match="rotary type"):
        rope_config_of_rotary(SimpleNamespace(rotary={"base": 1, "type": "yarn"}))


def test_a_tokenizer_of_repo_code_needs_the_flag_and_token_ids_run_without_it(bench, tmp_path):
    from typer.testing import CliRunner

    from llmctl import LLM, SamplingParams
    from llmctl.cli.app import app

    path = tmp_path / "internlm2"
    shutil.copytree(bench.checkpoint("internlm2"), path)
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
    }))  # fmt: skip
    kw = dict(dtype="float32", device="cpu", max_model_len=32, num_kv_blocks=16, block_size=4)
    with pytest.raises(UnsupportedModelError, match="defined by code in the model's repo") as err:
        LLM(str(path), **kw)
    assert "--trust-remote-code" in err.value.hint
    result = CliRunner().invoke(app, ["generate", "-m", str(path), "-p", "hello", "--device", "cpu"])
    assert result.exit_code == UnsupportedModelError.exit_code
    assert "--trust-remote-code" in result.stderr and "Traceback" not in result.stderr
    llm = LLM(str(path), skip_tokenizer_init=True, **kw)
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    assert len(llm.generate([{"prompt_token_ids": [5, 6, 7]}], params)[0].outputs[0].token_ids) == 3
