"""Writers of `llmctl embed`: JSONL, CSV/TSV and .npy rows as they come, and the --query ranking."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from llmctl.cli.stream import open_output
from llmctl.core.errors import LlmctlError, UsageError


def refuse_bad(bad: list) -> None:
    """The matrix formats (npy, csv, tsv) have no row for a line that cannot be embedded: stop, naming it."""
    if not bad:
        return
    shown = ", ".join(str(line.index + 1) for line in bad[:10]) + (", ..." if len(bad) > 10 else "")
    raise LlmctlError(
        f"{len(bad)} input line(s) cannot be embedded (empty, not UTF-8 or too long): line {shown}",
        hint="remove them first, or use --format jsonl, which writes an error record for each",
    )


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


def _floats(row) -> list[str]:
    # str() of a float32 is its shortest round-trip form: half the bytes of a float64 repr, nothing lost
    return [str(x) for x in row]


def write_jsonl(rows, output: Path | None, with_text: bool) -> None:
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


def write_npy(rows, output: Path, dims: int) -> None:
    """A float32 (n, dims) .npy written row by row: its header, sized for any n, is rewritten with n at the end."""
    with open_output(output, binary=True) as out:
        if not out.handle.seekable():
            raise UsageError(f"--format npy writes a file it can go back in: {output} is not one")
        out.write(_npy_header(0, dims))
        n = 0
        for line, result in rows:
            if result is None:
                refuse_bad([line])
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


def write_delimited(rows, output: Path | None, with_text: bool, delimiter: str, dims: int) -> None:
    with open_output(output) as out:
        writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
        writer.writerow(["index", *(["text"] if with_text else []), *(f"e{d}" for d in range(dims))])
        out.flush()
        for line, result in rows:
            if result is None:
                refuse_bad([line])
            writer.writerow([line.index, *([line.text] if with_text else []), *_floats(result[0])])
            out.flush()


def write_ranking(records: list[dict[str, Any]], output: Path | None) -> None:
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
