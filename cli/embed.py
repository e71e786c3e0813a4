"""`llmctl embed`: one vector per input line, in input order (JSONL, .npy, CSV/TSV), or lines ranked by a query."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmctl.cli.lines import LineSource, max_line_bytes, open_input, parse_all
from llmctl.cli.options import (
    DeviceOpt,
    DtypeOpt,
    RevisionOpt,
    SourceOpt,
    TrustRemoteCodeOpt,
    source_value,
)
from llmctl.cli.output import warn
from llmctl.cli.stream import Ready, in_order, open_output
from llmctl.core.errors import EXIT_ERROR, LlmctlError, UsageError

PROGRESS_MIN_LINES = 300  # a progress bar on stderr (when it is a TTY) above this many inputs
CHUNK_BATCHES = 8  # batches handed to the engine per call (the window of lines in flight)
PREFETCH = 4096  # lines read before loading the model: bad lines in sight refuse npy/csv/tsv before any work
E5_INSTRUCTION = "Instruct: {}\nQuery: "  # e5-mistral's query template


class EmbedFormat(str, Enum):
    jsonl = "jsonl"
    npy = "npy"
    csv = "csv"
    tsv = "tsv"


class Pooling(str, Enum):
    cls = "cls"
    mean = "mean"
    max = "max"
    lasttoken = "lasttoken"


@dataclass
class Line:
    """One input line: its text (None when not UTF-8), and why it cannot be embedded (blank, not UTF-8)."""

    index: int
    text: str | None = None
    error: str | None = None


def embed(
    file: Annotated[Optional[Path], typer.Argument(help="Input file, one text per line ('-' or nothing: stdin).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Embedding model (default: the configured default embed model).", show_default=False)] = None,
    output_format: Annotated[EmbedFormat, typer.Option("--format", help="Output format.")] = EmbedFormat.jsonl,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout (needed for npy); replaced atomically when the run completes.")] = None,
    with_text: Annotated[bool, typer.Option("--with-text", help="Add each input text to its record.")] = False,
    pooling: Annotated[Optional[Pooling], typer.Option("--pooling", help="Override the checkpoint's pooling.")] = None,
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="Override L2 normalisation.")] = None,
    prompt_name: Annotated[Optional[str], typer.Option("--prompt-name", help="A named prompt from the checkpoint.")] = None,
    instruction: Annotated[Optional[str], typer.Option("--instruction", help="e5-mistral style 'Instruct: ...' prefix.")] = None,
    dimensions: Annotated[Optional[int], typer.Option("--dimensions", min=1, help="Matryoshka truncation (renormalised).")] = None,
    query: Annotated[Optional[str], typer.Option("--query", help="Rank the input lines by cosine similarity to this text.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, help="With --query: show only the N best lines.", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Texts per batch (length-sorted inside).")] = 64,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    revision: RevisionOpt = None,
    source: SourceOpt = None,
) -> None:
    """Turn text into vectors: one input per line in, one vector per line out, in input order.

    Input is FILE, or stdin with '-' or no FILE, read as it comes: each record is written (and flushed) as
    soon as its batch is done, so pipelines flow and Ctrl-C keeps what finished. JSONL (the default) writes
    {"index", "embedding"} per line (--with-text adds "text"; a cut input adds "truncated": true); csv/tsv
    write a header (index[, text], e0, e1, ...) then one row per line; npy writes a float32 matrix to -o FILE.
    -o FILE is written to a temporary file beside it and renamed over it at the end: a failed or interrupted
    run leaves the old file as it was.

    Empty (or blank) lines, lines that are not UTF-8 and lines over 16 MiB never shift rows: in JSONL they
    get a record {"index", "error"} and the command exits 1 after writing everything; npy/csv/tsv have no
    row for them and stop at the first one (exit 1, the line named; refused before any work when it is in
    the first 4,096 lines; -o FILE is then left untouched). With --query they are left out of the ranking
    (a warning counts the undecodable ones).

    --prompt-name NAME prefixes every text with the checkpoint's prompt NAME; --instruction TEXT with
    e5-mistral's "Instruct: TEXT\\nQuery: ". With --query these prefixes go on the query only (documents
    are embedded as they are), and the lines come out best first: JSONL {"index", "score", "text"} in a
    pipe, a table on a terminal.
    """
    from llmctl.core.settings import load_settings

    _check_options(output_format, output, query, top_k, prompt_name, instruction)
    inputs = line_source(file)
    total = inputs.prefetch(PREFETCH)  # the number of lines when the input ends soon, else None
    if total == 0:
        raise UsageError("no input lines to embed")
    if query is None and output_format is not EmbedFormat.jsonl:
        _refuse_bad([line for line in inputs.ahead if line.error is not None])  # before loading, when in sight
    if query is not None and total is not None and all(line.error is not None for line in inputs.ahead):
        raise UsageError("--query: the input has no non-empty lines to rank")

    settings = load_settings()
    llm = _load_embedder(
        model or settings.default_embed_model, settings, dtype=dtype or settings.dtype,
        device=device or settings.device, trust_remote_code=trust_remote_code, revision=revision,
        source=source_value(source),
    )
    config = llm.embedding_config
    prompt = _prompt(config, prompt_name, instruction)
    if dimensions is not None and dimensions > config.dimension:
        raise UsageError(f"--dimensions {dimensions} is more than the model's {config.dimension} dimensions")
    options = {
        "pooling": pooling.value if pooling is not None else None,
        "normalize": normalize,
        "dimensions": dimensions,
        "batch_size": batch_size,
    }
    query_vec = None
    if query is not None:
        query_vec = embed_texts(llm, [query], prompt=prompt, **options)[0][0]
    rows = _embedded(llm, inputs, total, prompt=None if query is not None else prompt, **options)
    tally = _Tally()
    if query is not None:
        _write_ranking(rank(query_vec, tally.count(rows), top_k), output)
    elif output_format is EmbedFormat.npy:
        _write_npy(tally.count(rows), output, dimensions or config.dimension)
    elif output_format is EmbedFormat.jsonl:
        _write_jsonl(tally.count(rows), output, with_text)
    else:
        _write_delimited(tally.count(rows), output, with_text, "," if output_format is EmbedFormat.csv else "\t",
                         dimensions or config.dimension)
    if tally.cut:
        limit = config.max_seq_length
        warn(f"{tally.cut} of {tally.embedded} line(s) were longer than the model's {limit}-token limit and were cut")
    if query is not None and tally.undecodable:  # blank lines are no loss (paragraph breaks); bytes that are not text are
        warn(f"{tally.undecodable} line(s) that are not UTF-8 were left out of the ranking")
    if inputs.stopped:
        raise LlmctlError(inputs.stopped)
    if tally.bad and output_format is EmbedFormat.jsonl and query is None:
        warn(f"{tally.bad} of {tally.lines} line(s) were not embedded (empty, not UTF-8 or too long); see their error records")
        raise typer.Exit(EXIT_ERROR)


def _embedded(llm, inputs, total: int | None, *, prompt: str | None, batch_size: int, **options: Any):
    """(Line, (vector, truncated) or None for a bad line) in input order, each as soon as its batch is done.

    A window of a few batches is read (what has arrived of it), embedded in one call (the engine sorts it by
    length and packs it), and written before more input is read: memory stays bounded on endless input."""
    import numpy as np

    texts: dict[int, str] = {}

    def submit(line: Line):
        if line.error is not None:
            return Ready(None)
        texts[line.index] = line.text
        return line.index

    def collect(keys) -> dict:
        keys = list(keys)
        outs = llm.embed([texts.pop(k) for k in keys], prompt=prompt, batch_size=batch_size, **options)
        return {k: (np.asarray(out.outputs.embedding, dtype=np.float32), bool(getattr(out, "truncated", False)))
                for k, out in zip(keys, outs)}

    with _Progress(total) as advance:
        for line, result in in_order(inputs, submit, collect, batch_size * CHUNK_BATCHES):
            yield line, result
            advance(1)


class _Tally:
    """Counts what went through: lines, bad ones (and which were not UTF-8), embedded ones, cut ones."""

    def __init__(self):
        self.lines = self.bad = self.undecodable = self.embedded = self.cut = 0

    def count(self, rows):
        for line, result in rows:
            self.lines += 1
            if result is None:
                self.bad += 1
                self.undecodable += line.text is None
            else:
                self.embedded += 1
                self.cut += result[1]
            yield line, result


def _refuse_bad(bad: list[Line]) -> None:
    """The matrix formats (npy, csv, tsv) have no row for a line that cannot be embedded: stop, naming it."""
    if not bad:
        return
    shown = ", ".join(str(line.index + 1) for line in bad[:10]) + (", ..." if len(bad) > 10 else "")
    raise LlmctlError(
        f"{len(bad)} input line(s) cannot be embedded (empty, not UTF-8 or too long): line {shown}",
        hint="remove them first, or use --format jsonl, which writes an error record for each",
    )


def _check_options(fmt: EmbedFormat, output: Path | None, query: str | None, top_k: int | None,
                   prompt_name: str | None, instruction: str | None) -> None:
    """Usage errors that need no model and no input: fail before reading stdin or loading weights."""
    if fmt is EmbedFormat.npy and (output is None or str(output) == "-"):
        raise UsageError("--format npy writes a binary file: give it with -o FILE.npy")
    if query is not None and fmt is not EmbedFormat.jsonl:
        raise UsageError("--query writes a ranking (JSONL, or a table on a terminal): --format does not apply")
    if top_k is not None and query is None:
        raise UsageError("--top-k only applies with --query")
    if prompt_name is not None and instruction is not None:
        raise UsageError("give --prompt-name or --instruction, not both")
    if query is not None and not query.strip():
        raise UsageError("--query: the query text is empty")


def line_source(file: Path | None) -> LineSource[Line]:
    """The input lines as Lines, read as they come: N lines give N rows whatever they hold."""
    stream = open_input(file, nothing_given="no input: give a FILE, or pipe texts on stdin (one per line)")
    return LineSource(stream, _line, max_line_bytes())


def parse_lines(raw: bytes) -> list[Line]:
    lines = parse_all(raw, _line)
    if not lines:
        raise UsageError("no input lines to embed")
    return lines


def _line(i: int, text: str | None, error: str | None) -> Line:
    if text is not None and not text.strip():
        error = f"line {i + 1} is empty"
    return Line(i, text=text, error=error)


def _load_embedder(name: str, settings, **kw: Any):
    """The embedding model (the seam tests replace): resolve the name like every command, then LLM(task='embed')."""
    from llmctl.core.engine.llm import LLM
    from llmctl.core.resolve import resolve_model

    src = resolve_model(name, revision=kw["revision"], source=kw.pop("source"), settings=settings)
    return LLM(str(src.materialize()), task="embed", **kw)


def _prompt(config, prompt_name: str | None, instruction: str | None) -> str | None:
    if instruction is not None:
        return E5_INSTRUCTION.format(instruction)
    if prompt_name is None:
        return None  # the checkpoint's default prompt, if it names one
    prompts = dict(config.prompts or {})
    if prompt_name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise UsageError(f"--prompt-name {prompt_name!r}: this model's prompts are: {known}")
    return prompts[prompt_name]


def embed_texts(llm, texts: list[str], *, prompt: str | None, batch_size: int, **options: Any):
    """(float32 matrix (n, dim) in input order, bool mask (n,) of the inputs cut); a progress bar on big inputs.

    The texts go to the engine longest-first in chunks of a few batches (the engine length-sorts
    and packs inside each chunk); the chunks make the progress bar move and are put back in order.
    """
    import numpy as np

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    chunk = batch_size * CHUNK_BATCHES
    rows: list[Any] = [None] * len(texts)
    cut = np.zeros(len(texts), dtype=bool)
    with _Progress(len(texts)) as advance:
        for start in range(0, len(order), chunk):
            ids = order[start:start + chunk]
            outs = llm.embed([texts[i] for i in ids], prompt=prompt, batch_size=batch_size, **options)
            for i, out in zip(ids, outs):
                rows[i] = np.asarray(out.outputs.embedding, dtype=np.float32)
                cut[i] = bool(getattr(out, "truncated", False))
            advance(len(ids))
    dim = rows[0].shape[0] if rows else 0
    matrix = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)  # (n, dim)
    return matrix, cut


class _Progress:
    """A rich progress bar on stderr (when it is a terminal) for big or open-ended inputs; otherwise nothing."""

    def __init__(self, total: int | None):
        self.total = total
        self.bar = None

    def __enter__(self):
        if (self.total is not None and self.total <= PROGRESS_MIN_LINES) or not sys.stderr.isatty():
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from llmctl.cli.output import stderr_console

        self.bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=stderr_console(), transient=True)
        self.bar.start()
        task = self.bar.add_task("embed", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def rank(query_vec, rows, top_k: int | None) -> list[dict[str, Any]]:
    """Records {index, score, text} of the embedded rows, best cosine similarity first (ties keep input order).

    With top_k only the k best are held while the input streams by."""
    import heapq

    import numpy as np

    query_norm = np.linalg.norm(query_vec)
    best: list[tuple[float, int, str]] = []  # (score, -index, text): a min-heap of the k best with top_k
    for line, result in rows:
        if result is None:
            continue
        vec = result[0]
        score = float(vec @ query_vec) / max(float(np.linalg.norm(vec) * query_norm), 1e-12)
        entry = (round(score, 6), -line.index, line.text)
        if top_k is None:
            best.append(entry)
        elif len(best) < top_k:
            heapq.heappush(best, entry)
        else:
            heapq.heappushpop(best, entry)
    ordered = sorted(best, reverse=True)
    return [{"index": -neg, "score": score, "text": text} for score, neg, text in ordered]


# -- writers --------------------------------------------------------------------------------------------


def _floats(row) -> list[str]:
    # str() of a float32 is its shortest round-trip form: half the bytes of a float64 repr, nothing lost
    return [str(x) for x in row]


def _write_jsonl(rows, output: Path | None, with_text: bool) -> None:
    with open_output(output) as out:
        for line, result in rows:
            if result is None:
                out.record(json.dumps({"index": line.index, "error": line.error}) + "\n")
                continue
            row, was_cut = result
            head: dict[str, Any] = {"index": line.index}
            if with_text:
                head["text"] = line.text
            if was_cut:
                head["truncated"] = True
            head_json = json.dumps(head, ensure_ascii=False)[:-1]  # the object, still open for the vector
            out.record(f'{head_json}, "embedding": [{", ".join(_floats(row))}]}}\n')


def _write_npy(rows, output: Path, dims: int) -> None:
    """A float32 (n, dims) .npy written row by row: its header, sized for any n, is rewritten with n at the end."""
    with open_output(output, binary=True) as out:
        if not out.handle.seekable():
            raise UsageError(f"--format npy writes a file it can go back in: {output} is not one")
        out.write(_npy_header(0, dims))
        n = 0
        for line, result in rows:
            if result is None:
                _refuse_bad([line])
            out.write(_f32(result[0]).tobytes())
            n += 1
        out.handle.seek(0)
        out.write(_npy_header(n, dims))


def _f32(row):
    import numpy as np

    return np.ascontiguousarray(row, dtype="<f4")


def _npy_header(rows: int, dims: int) -> bytes:
    """An .npy version 1.0 header for a C-order little-endian float32 (rows, dims) matrix, always 128 bytes."""
    meta = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dims)
    return b"\x93NUMPY\x01\x00" + (118).to_bytes(2, "little") + meta.ljust(117).encode("latin1") + b"\n"


def _write_delimited(rows, output: Path | None, with_text: bool, delimiter: str, dims: int) -> None:
    with open_output(output) as out:
        writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
        writer.writerow(["index", *(["text"] if with_text else []), *(f"e{d}" for d in range(dims))])
        out.flush()
        for line, result in rows:
            if result is None:
                _refuse_bad([line])
            writer.writerow([line.index, *([line.text] if with_text else []), *_floats(result[0])])
            out.flush()


def _write_ranking(records: list[dict[str, Any]], output: Path | None) -> None:
    if output is not None or not sys.stdout.isatty():
        with open_output(output) as out:
            for record in records:
                out.record(json.dumps(record, ensure_ascii=False) + "\n")
        return
    from rich.table import Table

    from llmctl.cli.output import stdout_console

    table = Table(box=None, header_style="bold")
    rows = [(str(n), f"{r['score']:.4f}", str(r["index"] + 1), r["text"]) for n, r in enumerate(records, 1)]
    for col, name in enumerate(("rank", "score", "line")):
        width = max([len(name), *(len(row[col]) for row in rows)])
        table.add_column(name, justify="right", no_wrap=True, min_width=width)
    table.add_column("text", overflow="ellipsis", no_wrap=True, ratio=1)  # the text column takes what is left
    for row in rows:
        table.add_row(*row)
    stdout_console().print(table)
