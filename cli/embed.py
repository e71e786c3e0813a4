"""`llmctl embed`: one vector per input line, in input order (JSONL, .npy, CSV/TSV), or lines ranked by a query."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmctl.cli.embed_output import rank, refuse_bad, write_delimited, write_jsonl, write_npy, write_ranking
from llmctl.cli.lines import LineSource, check_option_text, max_line_bytes, open_input, parse_all
from llmctl.cli.options import (
    DeviceOpt,
    DtypeOpt,
    RevisionOpt,
    SourceOpt,
    TrustRemoteCodeOpt,
    source_value,
)
from llmctl.cli.output import warn
from llmctl.cli.stream import Ready, in_order
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
        refuse_bad([line for line in inputs.ahead if line.error is not None])  # before loading, when in sight
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
    tally = _Tally()
    rows = tally.count(_embedded(llm, inputs, total, prompt=None if query is not None else prompt, **options))
    dims = dimensions or config.dimension
    if query is not None:
        ranking = rank(query_vec, rows, top_k)
        if not tally.embedded:
            raise UsageError("--query: the input has no non-empty lines to rank")
        write_ranking(ranking, output)
    elif output_format is EmbedFormat.npy:
        write_npy(rows, output, dims)
    elif output_format is EmbedFormat.jsonl:
        write_jsonl(rows, output, with_text)
    else:
        write_delimited(rows, output, with_text, "," if output_format is EmbedFormat.csv else "\t", dims)
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
    check_option_text(("--query", query), ("--instruction", instruction), ("--prompt-name", prompt_name))


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
