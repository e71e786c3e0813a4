"""Streaming plumbing for generate and embed: a bounded window of inputs in flight, records out in input order
as soon as they are done, each flushed, to stdout or to a file replaced atomically."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from llmctl.cli.output import writing_to
from llmctl.core.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Ready:
    """What submit returns for an input with nothing to run (an error record): it waits only for the ones before it."""

    value: Any


def in_order(
    source,
    submit: Callable[[T], Hashable | Ready],
    collect: Callable[[Collection[Hashable]], dict[Hashable, Any]],
    window: int,
    abandon: Callable[[Collection[Hashable]], None] | None = None,
) -> Iterator[tuple[T, Any]]:
    """(item, result) pairs in input order, each as soon as it and every item before it are done.

    `source.take(n, wait)` gives the next items (cli/lines.py); `submit(item)` hands one to the engine and returns
    its key, or Ready(result); `collect(keys)` advances the engine and returns {key: result} for those that finished
    (possibly none). New items are taken while earlier ones run (without waiting for input that has not arrived
    when there is work in flight), and at most `window` items are between submit and their yield, so memory stays
    bounded however long the input is. If the consumer stops early, `abandon(keys)` drops the ones still running.
    """
    pending: deque[tuple[T, Any]] = deque()  # submitted and not yet yielded, in input order
    running: set[Hashable] = set()
    done: dict[Hashable, Any] = {}
    try:
        while True:
            if len(pending) < window and not source.exhausted:
                for item in source.take(window - len(pending), wait=not pending):
                    key = submit(item)
                    pending.append((item, key))
                    if not isinstance(key, Ready):
                        running.add(key)
            while pending:
                item, key = pending[0]
                if isinstance(key, Ready):
                    result = key.value
                elif key in done:
                    result = done.pop(key)
                else:
                    break
                pending.popleft()
                yield item, result
            if not pending:
                if source.exhausted:
                    return
                continue
            finished = collect(running)
            running.difference_update(finished)
            done.update(finished)
    except KeyboardInterrupt:
        raise  # the command ends here: nothing is gained by tidying the engine first
    except BaseException:  # the consumer stopped (closed pipe, an early break) or a step failed
        if running and abandon is not None:
            try:
                abandon(list(running))
            except Exception:  # noqa: BLE001 - the error already on its way is the one to report
                pass
        raise


class Writer:
    """Text or bytes to one stream, flushed per record; a failed write (a full disk) is one clear OutputError."""

    def __init__(self, handle: IO[Any], name: str):
        self.handle = handle
        self.name = name

    def write(self, data: Any) -> None:
        with writing_to(self.name):
            self.handle.write(data)

    def flush(self) -> None:
        with writing_to(self.name):
            self.handle.flush()

    def record(self, data: Any) -> None:
        self.write(data)
        self.flush()


def stdout_writer(binary: bool = False) -> Writer:
    return Writer(sys.stdout.buffer if binary else sys.stdout, "to stdout")


@contextmanager
def open_output(output: Path | None, binary: bool = False) -> Iterator[Writer]:
    """A Writer to stdout (None or '-'), or to FILE through atomic_file."""
    if output is None or str(output) == "-":
        writer = stdout_writer(binary)
        yield writer
        writer.flush()
        return
    with atomic_file(output, binary) as writer:
        yield writer


@contextmanager
def atomic_file(path: Path, binary: bool = False) -> Iterator[Writer]:
    """A Writer to a temporary file beside `path`, renamed over it only when the block completes.

    A full disk, an error or Ctrl-C mid-way leaves the old file as it was and no temporary file behind. A
    symlink's target is the file replaced; a device or FIFO (-o /dev/stdout) is written directly, as it cannot
    be replaced.
    """
    target = Path(os.path.realpath(path))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    if mode is not None and not stat.S_ISREG(mode):
        yield from _direct(path, binary)
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    handle = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")
    try:
        writer = Writer(handle, str(path))
        yield writer
        writer.flush()
        with writing_to(str(path)):
            os.fsync(handle.fileno())
        handle.close()
        os.chmod(tmp, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        try:
            handle.close()
        except OSError:
            pass  # the data it still held cannot be written either; the file goes anyway
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _direct(path: Path, binary: bool) -> Iterator[Writer]:
    try:
        handle = open(path, "wb") if binary else open(path, "w", encoding="utf-8", newline="")
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    with handle:
        writer = Writer(handle, str(path))
        yield writer
        writer.flush()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
