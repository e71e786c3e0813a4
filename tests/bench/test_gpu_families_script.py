"""tests/bench/gpu_families.py, proven on the CPU: tiny shapes of the real configs, JSON lines, errors recorded."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SHORT = ["--tiny", "--device", "cpu", "--no-embed", "--input-len", "12", "--output-len", "6", "--batch-size", "2",
         "--num-prompts", "3", "--repeats", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_families", HERE / "gpu_families.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["gemma-2-9b", "gpt-j-6b", "falcon-7b", "opt-6.7b", "bge-large-en-v1.5"])
def test_tiny_config_keeps_the_architecture_keys(script, name):
    from transformers import AutoConfig

    from llmctl.core.bench import bench_task

    raw = json.loads((script.ROOT / name / "config.json").read_text())
    tiny = script.tiny_config(raw)
    assert set(tiny) == set(raw) and tiny["architectures"] == raw["architectures"]
    assert tiny["vocab_size"] == 512
    for key in ("hidden_size", "n_embd", "num_hidden_layers", "n_layer"):
        if key in raw:
            assert tiny[key] < raw[key]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(raw.get(key), int):
            assert 0 <= tiny[key] < 512


def test_gptj_rotary_share_and_gemma2_window_shrink(script):
    gptj = script.tiny_config(json.loads((script.ROOT / "gpt-j-6b" / "config.json").read_text()))
    assert gptj["rotary_dim"] == 4  # 64 of 256 per head -> 4 of 16
    gemma2 = script.tiny_config(json.loads((script.ROOT / "gemma-2-9b" / "config.json").read_text()))
    assert gemma2["sliding_window"] == 32 and gemma2["num_key_value_heads"] == 2 and gemma2["head_dim"] == 16


def test_script_end_to_end_and_errors_recorded(script, tmp_path, monkeypatch, capsys):
    out = tmp_path / "families.jsonl"
    assert script.main([*SHORT, "--only", "falcon-7b", "--out", str(out)]) == 0
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["family"] == "falcon-7b" and line["status"] == "ok"
    s = line["summary"]
    assert s["batched_generation_ok"] is True and s["greedy_tokens_matching"] == 6  # weights handed over
    assert line["result"]["settings"]["handover"] == "device" and line["result"]["weights"] == "random"

    import llmctl.core.bench as bench

    real = bench.run_bench

    def flaky(cfg, log=None):
        if "opt" in cfg.model:
            raise RuntimeError("boom")
        return real(cfg, log)

    monkeypatch.setattr(bench, "run_bench", flaky)
    assert script.main([*SHORT, "--only", "opt-6.7b", "--only", "falcon-7b", "--out", str(out)]) == 1
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["family"], r["status"]) for r in lines[1:]] == [("opt-6.7b", "error"), ("falcon-7b", "ok")]
    assert "RuntimeError: boom" in lines[1]["error"]
    table = capsys.readouterr().out
    assert "ERROR: RuntimeError: boom" in table and "falcon-7b" in table
