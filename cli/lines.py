"""Line-oriented input shared by the commands that read a file or stdin: N lines in, N items out."""

from __future__ import annotations

import sys
from pathlib import Path

from llmctl.core.errors import InvalidValueError, UsageError
from llmctl.core.values import text_problem


def read_input(file: Path | None, *, nothing_given: str) -> bytes:
    """The bytes of FILE, or of stdin for '-' or no FILE; `nothing_given` is the error when stdin is a terminal."""
    if file is not None and str(file) != "-":
        try:
            return file.read_bytes()
        except OSError as err:
            raise UsageError(f"cannot read {file}: {err.strerror or err}") from None
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError(nothing_given)
    return sys.stdin.buffer.read()


def split_lines(raw: bytes) -> list[tuple[str | None, str | None]]:
    """One (text, error) per line, in order: text is None and error says why when a line is not UTF-8."""
    chunks = raw.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()  # the newline that ends the last line does not start another
    out: list[tuple[str | None, str | None]] = []
    for i, chunk in enumerate(chunks):
        try:
            out.append((chunk.rstrip(b"\r").decode("utf-8"), None))
        except UnicodeDecodeError as err:
            out.append((None, f"line {i + 1} is not valid UTF-8 (byte {err.start})"))
    return out


def check_option_text(*options: tuple[str, str | None]) -> None:
    """Refuse an option's text that is not valid Unicode (a byte that is not UTF-8 on the command line
    reaches Python as a lone surrogate): one clear usage error before any model loads."""
    for name, value in options:
        why = None if value is None else text_problem(value)
        if why is not None:
            raise InvalidValueError(f"{name}: the text {why}", hint="give it as UTF-8 text")
