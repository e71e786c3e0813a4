"""Metadata commands answer on every valid config: unfamiliar keys leave sizes unknown (null), never an error.

Configs come from transformers' own config classes with their defaults (no torch needed), written as a
checkpoint's config.json with the `architectures` a saved model would carry.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import pytest
import typer
from click.testing import CliRunner
from rich.console import Console

from llmctl.cli.app import app
from llmctl.cli.check import _render as render_check
from llmctl.cli.inspect_arch import _render as render_inspect

transformers = pytest.importorskip("transformers")
from transformers.models.auto import modeling_auto  # noqa: E402
from transformers.models.auto.configuration_auto import CONFIG_MAPPING  # noqa: E402

COMMAND = typer.main.get_command(app)  # built once: Typer rebuilds it on every invoke otherwise (~30 ms)
RUNNER = CliRunner()
STRUCTURAL = ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size")


def _config(model_type: str, **overrides) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        return CONFIG_MAPPING[model_type](**overrides).to_dict()


def _write(tmp_path: Path, name: str, config: dict, architecture: str | None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    if architecture:
        config = dict(config, architectures=[architecture])
    (folder / "config.json").write_text(json.dumps(config, default=str))  # inf -> "Infinity" as json.dump writes
    return folder


def _table(render, data) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    render(console, data)
    return console.export_text()


def _run(*args) -> tuple[int, dict | None, str]:
    result = RUNNER.invoke(COMMAND, [str(a) for a in args])
    data = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, data, result.stderr


def _answers(folder: Path) -> tuple[dict, dict]:
    """check, inspect-arch and quantize-info --json on `folder` all answer (check may say 'not supported', with
    reasons); returns check's and inspect-arch's JSON."""
    code, check, err = _run("check", folder, "--json")
    assert code in (0, 1) and "internal error" not in err and check is not None, (folder.name, code, err)
    assert check["supported"] is (code == 0)
    assert check["supported"] or check["reasons"], folder.name  # 'not supported' always says why
    code, report, err = _run("inspect-arch", folder, "--json")
    assert code == 0 and "internal error" not in err and report is not None, (folder.name, code, err)
    for key in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size",
                "num_parameters", "kv_cache_bytes_per_token", "state_bytes_per_sequence"):
        value = report[key]  # a number that makes sense, or null
        assert value is None or (isinstance(value, int) and value >= 0), (folder.name, key, value)
    if report["attention"] == "none":
        assert report["kv_cache_bytes_per_token"] == 0 and report["num_attention_heads"] is None
    for name in report["unknown"]:  # what is unknown is null, and said
        assert name in STRUCTURAL and report[name] is None, (folder.name, name)
    if report["unknown"]:
        assert any("unknown" in note for note in report["notes"]), folder.name
    assert set(check["unknown"]) == set(report["unknown"])
    if report["unknown"] or report["attention"] in (None, "none") or report["layers"] or report["moe"]:
        _table(render_check, check), _table(render_inspect, report)  # the human tables render what is unusual
    code, quant, err = _run("quantize-info", folder, "--json")
    assert code == 0 and quant is not None and quant["method"] is None, (folder.name, code, err)
    return check, report


# --- the architectures the issue names ------------------------------------------------------------------------


def test_gemma3n_text_per_layer_intermediate_size(tmp_path):
    config = _config("gemma3n_text")
    assert isinstance(config["intermediate_size"], list)  # one entry per layer: what crashed int()
    _, report = _answers(_write(tmp_path, "g", config, "Gemma3nForCausalLM"))
    assert report["intermediate_size"] == config["intermediate_size"][0]
    shared = config["num_kv_shared_layers"]
    kv_layers = config["num_hidden_layers"] - shared  # the last layers reuse earlier layers' keys and values
    assert report["kv_cache_bytes_per_token"] == kv_layers * 2 * config["num_key_value_heads"] * config["head_dim"] * 2
    assert f"last {shared} layers" in report["kv_cache_note"]


def test_varying_per_layer_size_is_unknown_and_said(tmp_path):
    config = _config("gemma3n_text", num_hidden_layers=4, layer_types=["sliding_attention"] * 3 + ["full_attention"],
                     intermediate_size=[512, 512, 1024, 1024], num_kv_shared_layers=0)
    check, report = _answers(_write(tmp_path, "g", config, "Gemma3nForCausalLM"))
    assert report["intermediate_size"] is None and report["num_parameters"] is None
    assert any("intermediate_size differs between layers (512, 1024)" in note for note in report["notes"])
    assert report["kv_cache_bytes_per_token"] is not None  # what does not depend on it is still computed


@pytest.mark.parametrize("model_type, architecture, top_k_key, overrides", [
    ("ernie4_5_moe", "Ernie4_5_MoeForCausalLM", "moe_k", {"moe_k": 3, "moe_num_experts": 16}),
    ("hunyuan_v1_moe", "HunYuanMoEV1ForCausalLM", "moe_topk", {"moe_topk": 2, "num_experts": 8}),
    ("longcat_flash", "LongcatFlashForCausalLM", "moe_topk", {"moe_topk": 4, "n_routed_experts": 32}),
    # declares num_experts_per_tok = 8 and num_local_experts = 256 but stores them as these two: the file wins
    ("kimi_linear", "KimiLinearForCausalLM", "num_experts_per_token", {"num_experts_per_token": 2, "num_experts": 4}),
])
def test_moe_top_k_under_family_names(tmp_path, model_type, architecture, top_k_key, overrides):
    config = _config(model_type, **overrides)
    assert "num_experts_per_tok" not in config and config[top_k_key] == overrides[top_k_key]
    _, report = _answers(_write(tmp_path, model_type, config, architecture))
    experts = next(v for k, v in overrides.items() if k != top_k_key)
    assert report["moe"]["experts_per_token"] == overrides[top_k_key]
    assert report["moe"]["num_experts"] == experts
    if model_type == "longcat_flash":
        assert report["attention"] == "MLA" and report["num_layers"] == config["num_layers"]


def test_moe_without_a_readable_top_k_answers(tmp_path, model_writer, llama_config):
    config = {**llama_config, "architectures": ["FooMoeForCausalLM"], "model_type": "foo_moe", "num_experts": 8}
    check, report = _answers(model_writer(tmp_path / "f", config))
    assert report["moe"]["experts_per_token"] is None and report["num_active_parameters"] is None
    assert any("experts-per-token" in note for note in report["notes"])


@pytest.mark.parametrize("model_type, architecture", [
    ("mamba", "MambaForCausalLM"), ("falcon_mamba", "FalconMambaForCausalLM"),
])
def test_mamba_is_attention_free(tmp_path, model_type, architecture):
    config = _config(model_type)
    check, report = _answers(_write(tmp_path, model_type, config, architecture))
    assert report["attention"] == "none" and report["unknown"] == []
    assert report["num_attention_heads"] is None and report["num_kv_heads"] is None
    assert report["kv_cache_bytes_per_token"] == 0
    inner = config["intermediate_size"]  # conv window (inner, conv_kernel) + SSM state (inner, state_size)
    per_layer = inner * config["conv_kernel"] + inner * config["state_size"]
    assert report["state_bytes_per_sequence"] == config["num_hidden_layers"] * per_layer * 2
    assert report["layers"] == {"kv_cache_layers": 0, "state_layers": {"mamba": config["num_hidden_layers"]}}
    assert check["architecture"] == architecture and check["tasks"] == ["generate"]


def test_mamba2_heads_are_not_attention_heads(tmp_path):
    config = _config("mamba2")
    assert config["num_heads"] and config["head_dim"]  # SSM heads
    _, report = _answers(_write(tmp_path, "m2", config, "Mamba2ForCausalLM"))
    assert report["attention"] == "none" and report["num_attention_heads"] is None
    heads, head_dim, state, groups = config["num_heads"], config["head_dim"], config["state_size"], config["n_groups"]
    inner = config["expand"] * config["hidden_size"]
    per_layer = (inner + 2 * groups * state) * config["conv_kernel"] + heads * head_dim * state
    assert report["state_bytes_per_sequence"] == config["num_hidden_layers"] * per_layer * 2


def test_nemotron_h_layer_pattern(tmp_path):
    pattern = ["linear_attention", "moe", "linear_attention", "full_attention", "mlp", "linear_attention"]
    config = _config("nemotron_h", layers_block_type=pattern)
    assert "num_hidden_layers" not in config  # the count is the pattern's length
    _, report = _answers(_write(tmp_path, "n", config, "NemotronHForCausalLM"))
    assert report["num_layers"] == len(pattern)
    assert report["layers"] == {"kv_cache_layers": 1, "state_layers": {"mamba": 3}}
    assert report["kv_cache_bytes_per_token"] == 1 * 2 * config["num_key_value_heads"] * config["head_dim"] * 2
    assert report["moe"]["num_moe_layers"] == 1


def test_jamba_attention_every_period(tmp_path):
    config = _config("jamba", num_hidden_layers=8, attn_layer_period=4, attn_layer_offset=2)
    _, report = _answers(_write(tmp_path, "j", config, "JambaForCausalLM"))
    assert report["layers"] == {"kv_cache_layers": 2, "state_layers": {"mamba": 6}}
    assert report["moe"]["num_moe_layers"] == 4  # expert_layer_period 2, offset 1


@pytest.mark.parametrize("model_type, keys, kv_layers, state", [
    # hub files that carry only the key transformers derives layer_types from
    ("qwen3_next", {"full_attention_interval": 4}, 2, {"linear attention": 6}),
    ("lfm2", {"full_attn_idxs": [2, 5]}, 2, {"convolution": 6}),
    ("minimax", {"attn_type_list": [0, 0, 0, 1, 0, 0, 0, 1]}, 2, {"linear attention": 6}),
    ("nemotron_h", {"hybrid_override_pattern": "M-M*-ME-M", "mamba_num_heads": 8}, 1, {"mamba": 4}),
])
def test_hybrid_layouts_from_hub_keys(tmp_path, model_writer, llama_config, model_type, keys, kv_layers, state):
    config = {**llama_config, "architectures": ["HybridForCausalLM"], "model_type": model_type,
              "num_hidden_layers": 8, **keys}
    if "hybrid_override_pattern" in keys:
        del config["num_hidden_layers"]  # NemotronH's count is its pattern's length
    check, report = _answers(model_writer(tmp_path / model_type, config))
    assert report["layers"] == {"kv_cache_layers": kv_layers, "state_layers": state}
    per_layer = 2 * llama_config["num_key_value_heads"] * report["head_dim"] * 2  # bf16
    assert report["kv_cache_bytes_per_token"] == kv_layers * per_layer
    assert check["memory"] == {} or check["memory"]["kv_cache_bytes_per_token"] == kv_layers * per_layer


def test_distilbert_spells_its_sizes(tmp_path):
    config = _config("distilbert")
    assert "hidden_size" not in config and "num_hidden_layers" not in config
    _, report = _answers(_write(tmp_path, "d", config, "DistilBertModel"))
    expected = (config["n_layers"], config["dim"], config["n_heads"], config["hidden_dim"])
    assert (report["num_layers"], report["hidden_size"], report["num_attention_heads"],
            report["intermediate_size"]) == expected
    assert report["kind"] == "encoder-only" and report["kv_cache_bytes_per_token"] == 0


def test_unknown_sizes_render_as_unknown(tmp_path, model_writer, llama_config):
    config = {k: v for k, v in llama_config.items() if k not in ("num_attention_heads", "num_key_value_heads")}
    folder = model_writer(tmp_path / "c", {**config, "architectures": ["CustomForCausalLM"], "model_type": "custom"})
    check, report = _answers(folder)
    assert report["unknown"] == ["num_attention_heads", "num_kv_heads", "head_dim"]
    assert report["kv_cache_bytes_per_token"] is None and report["num_parameters"] is None
    text = _table(render_inspect, report)
    assert "unknown heads, unknown KV heads, head dim unknown" in text
    assert "KV cache per token     unknown" in text
    assert "num_attention_heads, num_kv_heads, head_dim" in text
    assert "num_attention_heads, num_kv_heads, head_dim" in _table(render_check, check)


def test_attention_free_renders_its_state(tmp_path):
    _, report = _answers(_write(tmp_path, "m", _config("mamba"), "MambaForCausalLM"))
    assert report["position_embedding"] == "none" and report["rope_theta"] is None
    text = _table(render_inspect, report)
    assert "none (attention-free)" in text and "state per sequence     1.88 MiB" in text


# --- every config class transformers ships ------------------------------------------------------------------


def _architecture_for(model_type: str) -> str | None:
    """The class a saved model of this type names: causal LM first, then the base model, then any head."""
    tables = [modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, modeling_auto.MODEL_MAPPING_NAMES]
    tables += [getattr(modeling_auto, n) for n in sorted(dir(modeling_auto)) if n.endswith("_MAPPING_NAMES")]
    for table in tables:
        found = table.get(model_type)
        if found:
            return found if isinstance(found, str) else found[0]
    return None


@pytest.mark.slow
def test_every_transformers_config_class_gets_an_answer(tmp_path):
    answered, skipped = 0, []
    for model_type in sorted(CONFIG_MAPPING.keys()):
        try:
            config = _config(model_type)
        except Exception as error:  # noqa: BLE001 - transformers cannot build its own default: not a valid config
            skipped.append(f"{model_type}: {type(error).__name__}")
            continue
        architecture = _architecture_for(model_type)
        assert architecture, f"{model_type}: no model class names it"
        _answers(_write(tmp_path, model_type, config, architecture))
        answered += 1
    assert answered > 0.95 * len(CONFIG_MAPPING), skipped
