"""Line-oriented input shared by the commands that read a file or stdin: N lines in, N items out, read as they come."""

from __future__ import annotations

import io
import os
import select
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Generic, TypeVar

from llmctl.core.errors import InvalidValueError, UsageError
from llmctl.core.values import text_problem

T = TypeVar("T")

# A longer line is an error record, not a prompt: no context holds 16 MiB of text, and an endless line
# (`-f /dev/zero`) must not be read into memory. LLMCTL_MAX_LINE_BYTES lowers it (tests use a small one).
MAX_LINE_BYTES = 16 << 20
ENDLESS_FACTOR = 64  # past this many times the limit without a newline, a line is endless: reading stops
READ_SIZE = 1 << 16


def max_line_bytes() -> int:
    raw = os.environ.get("LLMCTL_MAX_LINE_BYTES", "")
    if not raw:
        return MAX_LINE_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"LLMCTL_MAX_LINE_BYTES must be a positive number of bytes, got {raw!r}")
    return value


def open_input(file: Path | None, *, nothing_given: str) -> IO[bytes]:
    """FILE opened unbuffered for reading, or stdin's bytes for '-' or no FILE (not a terminal)."""
    if file is not None and str(file) != "-":
        try:
            return open(file, "rb", buffering=0)
        except OSError as err:
            raise UsageError(f"cannot read {file}: {err.strerror or err}") from None
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError(nothing_given)
    buffer = sys.stdin.buffer
    return getattr(buffer, "raw", buffer)  # the raw stream: each read returns what has arrived so far


def decode_line(i: int, chunk: bytes) -> tuple[str | None, str | None]:
    """(text, None), or (None, why) when line i (0-based) is not UTF-8."""
    try:
        return chunk.rstrip(b"\r").decode("utf-8"), None
    except UnicodeDecodeError as err:
        return None, f"line {i + 1} is not valid UTF-8 (byte {err.start})"


class ListSource(Generic[T]):
    """Items known up front (--prompt arguments) behind LineSource's interface."""

    def __init__(self, items: list[T]):
        self._items = deque(items)
        self.stopped: str | None = None

    def take(self, n: int, wait: bool = True) -> list[T]:
        return [self._items.popleft() for _ in range(min(n, len(self._items)))]

    def prefetch(self, n: int) -> int | None:
        return len(self._items)

    @property
    def ahead(self) -> list[T]:
        return list(self._items)

    @property
    def exhausted(self) -> bool:
        return not self._items


class LineSource(Generic[T]):
    """The lines of a byte stream, parsed into items as they arrive; memory stays bounded whatever the input.

    `parse(index, text, error)` makes each line's item (text is None when the line is not UTF-8 or too long).
    take(n, wait) returns at most n items: with wait, it blocks until there is at least one (or the input
    ends); without, it returns only what has already arrived, so a caller with work in flight never stalls
    on a slow pipe. A line longer than max_bytes becomes an error item and is skipped to its newline; one
    that runs on past ENDLESS_FACTOR times that ends the input, and `stopped` says why.
    """

    def __init__(self, stream: IO[bytes], parse: Callable[[int, str | None, str | None], T], max_bytes: int):
        self._stream = stream
        self._parse = parse
        self._max = max_bytes
        self._fd = _fileno(stream)
        self._buf = bytearray()
        self._skipped: int | None = None  # bytes of an over-long line skipped so far, while skipping it
        self._lines: deque[tuple[int, bytes | None, str | None]] = deque()  # read, not parsed: bytes are compact
        self._next = 0
        self._eof = False
        self.stopped: str | None = None

    @property
    def exhausted(self) -> bool:
        return self._eof and not self._lines

    @property
    def ahead(self) -> list[T]:
        """The items read ahead (by prefetch) and not taken yet."""
        return [self._item(line) for line in self._lines]

    def take(self, n: int, wait: bool = True) -> list[T]:
        self._fill(n, wait)
        return [self._item(self._lines.popleft()) for _ in range(min(n, len(self._lines)))]

    def prefetch(self, n: int) -> int | None:
        """Read ahead up to n items, waiting only for the first; how many items the input holds when it ended
        within them (0: an empty input), else None."""
        self._fill(n, wait=True)
        return len(self._lines) if self._eof else None

    def _item(self, line: tuple[int, bytes | None, str | None]) -> T:
        index, raw, error = line
        text, error = (None, error) if raw is None else decode_line(index, raw)
        return self._parse(index, text, error)

    def _fill(self, n: int, wait: bool) -> None:
        while len(self._lines) < n and not self._eof:
            if not self._ready(block=wait and not self._lines):
                break
            try:
                data = self._stream.read(READ_SIZE)
            except OSError as err:
                raise UsageError(f"cannot read the input: {err.strerror or err}") from None
            self._feed(data)

    def _ready(self, block: bool) -> bool:
        """Whether a read returns at once; block: wait until it does."""
        if self._fd is None:
            return True  # an in-memory stream: reading never blocks
        try:
            return bool(select.select([self._fd], [], [], None if block else 0)[0])
        except (OSError, ValueError):
            return True

    def _emit(self, raw: bytes | None, error: str | None = None) -> None:
        self._lines.append((self._next, raw, error))
        self._next += 1

    def _too_long(self) -> None:
        self._emit(None, f"line {self._next + 1} is longer than {_size(self._max)}")
        self._buf.clear()
        self._skipped = 0

    def _feed(self, data: bytes | None) -> None:
        if data is None:  # a non-blocking stream with nothing yet
            return
        if not data:
            self._eof = True
            if self._buf:  # a last line without its newline
                self._emit(bytes(self._buf))
                self._buf.clear()
            return
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if self._skipped is not None:
                self._skipped += len(piece)
                if end >= 0:
                    self._skipped = None
                elif self._skipped > self._max * ENDLESS_FACTOR:
                    self.stopped = (f"line {self._next} did not end within {_size(self._max * ENDLESS_FACTOR)}: "
                                    "stopped reading the input there")
                    self._eof = True
                    return
            else:
                self._buf += piece
                if len(self._buf) > self._max:
                    self._too_long()
                    if end >= 0:
                        self._skipped = None
                elif end >= 0:
                    self._emit(bytes(self._buf))
                    self._buf.clear()
            if end < 0:
                return
            start = end + 1


def check_option_text(*options: tuple[str, str | None]) -> None:
    """Refuse an option's text that is not valid Unicode (a byte that is not UTF-8 on the command line
    reaches Python as a lone surrogate): one clear usage error before any model loads."""
    for name, value in options:
        why = None if value is None else text_problem(value)
        if why is not None:
            raise InvalidValueError(f"{name}: the text {why}", hint="give it as UTF-8 text")


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def parse_all(raw: bytes, parse: Callable[[int, str | None, str | None], T]) -> list[T]:
    """Every line of raw parsed at once, as the commands parse them one by one (small inputs, tests)."""
    source = LineSource(io.BytesIO(raw), parse, max_line_bytes())
    items: list[T] = []
    while not source.exhausted:
        items += source.take(1 << 16)
    return items
