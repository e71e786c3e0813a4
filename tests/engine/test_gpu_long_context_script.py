"""tests/engine/gpu_long_context.py, proven on the CPU before it meets a GPU: every part on a tiny config, failures
and an exhausted budget recorded instead of losing the other parts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "gpu_long_context.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_long_context", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sizes(script):
    """Shorter than --tiny still: prompts over several chunks of 32 tokens."""
    return {**script.TINY_SIZES, "budget": 32, "repro_len": 256, "repro_prompts": [100, 70], "long_len": 512,
            "long_prompts": [100, 500], "ttft": [[96, 1], [500, 1]], "decode_ctx": 96, "decode_tokens": 5,
            "chunk_len": 256, "chunk_prompt": 200, "chunk_budgets": [16, 64, 256], "warmup": 16}  # fmt: skip


@pytest.mark.parametrize("part", ["repro", "long", "chunked", "transformers"])
def test_each_part_runs_on_a_tiny_config(script, sizes, part, tmp_path):
    assert script.run_part(part, sizes, tmp_path) == 0
    result = json.loads((tmp_path / f"{part}.json").read_text())
    assert result["ok"] and "error" not in result
    if part in ("repro", "long"):
        lens = sizes["repro_prompts"] if part == "repro" else sizes["long_prompts"]
        assert [r["prompt_len"] for r in result["runs"]] == lens
        assert all(r["finite"] and len(r["tokens"]) == 4 for r in result["runs"])
    if part in ("long", "transformers"):
        assert set(result["ttft_ms"]) == {"96", "500"} and all(v > 0 for v in result["ttft_ms"].values())
    if part == "long":
        assert result["decode"]["new_tokens"] == 5 and result["decode"]["decode_tok_s"] > 0
    if part == "chunked":
        one = result["chunks_of_256"]
        assert result["chunks_of_16"]["chunks"] == 13 and one["chunks"] == 1
        assert result["chunks_of_16"]["tokens"] == one["tokens"]
        for r in (result["chunks_of_16"], one):
            assert r["tokens_are_transformers_greedy"] and r["sampled_logprob_max_diff_vs_transformers"] < 1e-4
            assert max(r["prompt_logprob_max_diff_vs_one_chunk"], r["prompt_logprob_max_diff_vs_transformers"]) < 1e-4
    assert script.summarize({part: result}).startswith(f"{part}: ok")


def test_a_failing_part_is_recorded(script, sizes, tmp_path, monkeypatch):
    def broken(s, result, save):
        result["runs"] = []
        save()
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(script, "part_repro", broken)
    assert script.run_part("repro", sizes, tmp_path) == 1
    result = json.loads((tmp_path / "repro.json").read_text())
    assert not result["ok"] and "illegal memory access" in result["error"] and "broken" in result["traceback"]
    assert "FAILED" in script.summarize({"repro": result})


def test_driver_writes_results_summary_and_skips_past_the_budget(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path), "--parts", "transformers,repro"]
    done = subprocess.run(cmd + ["--budget-s", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results) == ["transformers", "repro", "ttft_llmctl_vs_transformers"]
    assert all("budget" in results[p]["error"] for p in ("transformers", "repro"))
    assert results["ttft_llmctl_vs_transformers"] == {}
    assert "transformers: FAILED" in (tmp_path / "summary.txt").read_text()
    bad = subprocess.run(cmd[:-1] + ["nosuch"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown part" in bad.stderr


def test_ttft_comparison_pairs_the_same_prompt_lengths(script):
    results = {"long": {"part": "long", "ok": True, "ttft_ms": {"32768": 2000.0, "131000": 20000.0}},
               "transformers": {"part": "transformers", "ok": True, "ttft_ms": {"32768": 3000.0}}}  # fmt: skip
    assert script.compare_ttft(results) == {"32768": {"llmctl_ms": 2000.0, "transformers_ms": 3000.0, "speedup": 1.5}}
    assert "time to first token at 32768 tokens: llmctl 2000.0 ms, transformers (sdpa) 3000.0 ms: 1.5x" in (
        script.summarize(results))
