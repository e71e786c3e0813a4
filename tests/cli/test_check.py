"""`llmctl check`: verdicts, exit codes, JSON keys, memory fit, and one clear line for every bad input."""

from __future__ import annotations

import pytest

REQUIRED_KEYS = {"architecture", "supported", "implementation", "tasks", "needs_trust_remote_code", "quantization", "reasons"}


def test_native_llama_is_supported(run_cli, llama_dir):
    result = run_cli("check", llama_dir, "--json")
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert REQUIRED_KEYS <= set(data)
    assert data["supported"] is True
    assert data["implementation"] == "native"
    assert data["tasks"] == ["generate"]
    assert data["needs_trust_remote_code"] is False
    assert data["quantization"] is None
    assert data["memory"]["max_model_len"] == 512


@pytest.mark.parametrize(("architecture", "model_type"), [("Starcoder2ForCausalLM", "starcoder2"),
                                                       ("Olmo2ForCausalLM", "olmo2"), ("GraniteForCausalLM", "granite")])
def test_families_once_run_through_transformers_are_native(run_cli, tmp_path, model_writer, llama_config,
                                                            architecture, model_type):
    cfg = {**llama_config, "architectures": [architecture], "model_type": model_type}
    result = run_cli("check", model_writer(tmp_path / model_type, cfg), "--json")
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert (data["implementation"], data["verification"]) == ("native", "strict")
    assert data["needs_trust_remote_code"] is False and data["note"] is None


def test_memory_fit(run_cli, llama_dir):
    small = run_cli("check", llama_dir, "--json", "--gpu-memory", "0.000001")
    assert small.exit_code == 1
    assert small.json()["memory"]["fits"] is False
    assert any("GiB" in r for r in small.json()["reasons"])
    big = run_cli("check", llama_dir, "--json", "--gpu-memory", "80", "--max-model-len", "128")
    assert big.exit_code == 0
    mem = big.json()["memory"]
    assert mem["fits"] is True and mem["max_model_len"] == 128
    assert mem["kv_cache_bytes"] == mem["kv_cache_bytes_per_token"] * 128


def test_planned_architecture_is_not_supported(run_cli, tmp_path, model_writer, llama_config):
    # On the list, no native def, and not a causal LM transformers' backend could run: unsupported, with reasons.
    cfg = {**llama_config, "architectures": ["BartForConditionalGeneration"], "model_type": "bart",
           "d_model": 64, "encoder_layers": 2, "decoder_layers": 2}
    result = run_cli("check", model_writer(tmp_path / "g", cfg), "--json")
    assert result.exit_code == 1
    data = result.json()
    assert data["supported"] is False and data["implementation"] == "none"
    assert any("not built yet" in r for r in data["reasons"])


def test_planned_moe_architecture_runs_through_transformers(run_cli, tmp_path, model_writer, llama_config):
    cfg = {**llama_config, "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
           "num_local_experts": 4, "num_experts_per_tok": 2}
    result = run_cli("check", model_writer(tmp_path / "m", cfg), "--json")
    assert result.exit_code == 0
    data = result.json()
    assert data["supported"] is True and data["implementation"] == "transformers" and data["note"]


def test_unknown_architecture_suggests_nearest(run_cli, tmp_path, model_writer, llama_config):
    cfg = {**llama_config, "architectures": ["LlamaForCausalLMv9"]}
    result = run_cli("check", model_writer(tmp_path / "u", cfg), "--json")
    assert result.exit_code == 1
    reasons = " ".join(result.json()["reasons"])
    assert "not in llmctl's registry" in reasons and "LlamaForCausalLM" in reasons


def test_remote_code_model(run_cli, tmp_path, model_writer, llama_config):
    cfg = {**llama_config, "architectures": ["DeepseekForCausalLM"], "model_type": "deepseek",
           "auto_map": {"AutoModelForCausalLM": "modeling_deepseek.DeepseekForCausalLM"}}
    result = run_cli("check", model_writer(tmp_path / "r", cfg), "--json")
    assert result.exit_code == 1
    data = result.json()
    assert data["needs_trust_remote_code"] is True
    assert any("--trust-remote-code" in r for r in data["reasons"])


def test_repo_code_is_not_needed_for_a_native_architecture(run_cli, tmp_path, model_writer, llama_config):
    """InternLM2 repos map their own classes (auto_map), but llmctl runs the architecture natively."""
    cfg = {**llama_config, "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2",
           "auto_map": {"AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}}
    result = run_cli("check", model_writer(tmp_path / "r", cfg), "--json")
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert data["implementation"] == "native" and data["needs_trust_remote_code"] is False


def test_quantized_checkpoint_is_reported(run_cli, tmp_path, model_writer, llama_config):
    cfg = {**llama_config, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128,
                                                   "zero_point": True, "version": "gemm"}}
    result = run_cli("check", model_writer(tmp_path / "q", cfg), "--json")
    data = result.json()
    assert data["quantization"]["method"] == "awq"
    assert data["supported"] is False and result.exit_code == 1


def test_task_mismatch(run_cli, llama_dir):
    result = run_cli("check", llama_dir, "--json", "--task", "embed")
    assert result.exit_code == 1
    assert any("not embed" in r for r in result.json()["reasons"])


def test_human_output(run_cli, llama_dir):
    result = run_cli("check", llama_dir)
    # CliRunner's stdout is not a TTY, so the output is JSON unless a TTY is present: check both render paths.
    assert result.exit_code == 0
    from llmctl.cli.check import _render
    from rich.console import Console

    console = Console(record=True, width=120)
    _render(console, result.json())
    text = console.export_text()
    assert "LlamaForCausalLM" in text and "yes" in text and "native" in text


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_path", "no such file"),
        ("no_config", "no config.json"),
        ("bad_json", "not valid JSON"),
        ("no_architectures", "architectures"),
        ("bad_gguf", "GGUF"),
        ("offline_repo", "not in the local cache"),
    ],
)
def test_bad_inputs_give_one_line_and_exit_3(run_cli, tmp_path, model_writer, llama_config, case, message):
    if case == "missing_path":
        target = tmp_path / "nope"
    elif case == "no_config":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "bad_json":
        target = model_writer(tmp_path / "bad", None, **{"config.json": "{oops"})
    elif case == "no_architectures":
        target = model_writer(tmp_path / "na", {k: v for k, v in llama_config.items() if k not in ("architectures", "model_type")})
    elif case == "bad_gguf":
        target = tmp_path / "broken.gguf"
        target.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    else:
        target = "someone/not-cached-model"
    result = run_cli("check", target)
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("llmctl: error:") and message in lines[0]
    assert len(lines) <= 2 and "Traceback" not in result.stderr


def test_usage_error_exit_2(run_cli):
    assert run_cli("check").exit_code == 2
    assert run_cli("check", "x", "--task", "dance").exit_code == 2


def test_debug_shows_traceback(run_cli, tmp_path):
    result = run_cli("--debug", "check", tmp_path / "nope")
    assert result.exit_code != 0
    assert result.exception is not None and type(result.exception).__name__ == "ModelNotFoundError"


def test_config_show(run_cli, tmp_path, monkeypatch, llama_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"default_embed_model: mine\ndevice: cpu\naliases:\n  mine: {llama_dir}\n")
    monkeypatch.setenv("LLMCTL_CONFIG", str(cfg))
    result = run_cli("config", "show", "--json")
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert data["default_embed_model"] == {"value": "mine", "from": str(cfg)}
    assert data["default_model"]["from"] == "built-in"
    assert data["device"]["value"] == "cpu"
    assert data["aliases"]["mine"]["value"] == str(llama_dir)
    assert "smollm2-135m-instruct" in data["aliases"]
    cfg.write_text("dtype: [\n")
    bad = run_cli("config", "show")
    assert bad.exit_code == 2 and "not valid YAML" in bad.stderr
