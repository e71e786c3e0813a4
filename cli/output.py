"""One way out for every command: rich tables on a TTY, JSON for pipes, errors as one line on stderr."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, Callable

import click
import typer

from llmctl.core.errors import EXIT_ERROR, LlmctlError, OutputError

_state = {"debug": False}


def set_debug(flag: bool) -> None:
    _state["debug"] = flag


def debug_enabled() -> bool:
    return _state["debug"] or os.environ.get("LLMCTL_DEBUG", "") not in ("", "0", "false", "False")


def stdout_console():
    from rich.console import Console

    return Console(soft_wrap=False)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


class Output:
    """Chooses between human output (rich, on a TTY) and JSON (with --json, or when stdout is piped)."""

    def __init__(self, json_mode: bool = False, *, json_when_piped: bool = True):
        self.json_mode = json_mode or (json_when_piped and not sys.stdout.isatty())

    def emit(self, data: dict[str, Any], render: Callable[[Any, dict[str, Any]], None]) -> None:
        if self.json_mode:
            self.jsonl(data)
        else:
            render(stdout_console(), data)

    def jsonl(self, record: dict[str, Any]) -> None:
        from llmctl.cli.stream import stdout_writer

        stdout_writer().record(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def warn(message: str) -> None:
    """A diagnostic on stderr: stdout stays clean for the next command in the pipe."""
    sys.stderr.write(f"llmctl: warning: {message}\n")
    sys.stderr.flush()


def error_line(message: str, hint: str | None = None) -> None:
    sys.stderr.write(f"llmctl: error: {message}\n")
    if hint:
        sys.stderr.write(f"  hint: {hint}\n")
    sys.stderr.flush()


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command: LlmctlError -> one line on stderr and its exit code; a traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return fn(*args, **kwargs)
            finally:
                _flush_stdout()  # here, not at exit, so that a full disk is reported like any other error
        except (typer.Exit, typer.Abort, SystemExit, click.ClickException):
            raise  # Click reports its own usage errors (exit 2)
        except LlmctlError as err:
            if isinstance(err, OutputError):
                _silence_stdout()  # what stdout still buffers cannot be written either: drop it
            if debug_enabled():
                raise
            error_line(err.message, err.hint)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(0) from None
        except Exception as err:  # an llmctl bug: still one line, the traceback behind --debug
            if debug_enabled():
                raise
            error_line(f"internal error: {type(err).__name__}: {err}", "run again with --debug for the traceback")
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


@contextlib.contextmanager
def writing_to(name: str) -> Iterator[None]:
    """An OSError inside (a full disk, an I/O error) becomes one OutputError naming `name`; a closed pipe stays
    a BrokenPipeError, which the CLI ends on quietly (`| head`)."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as err:
        raise OutputError(f"cannot write {name}: {err.strerror or err}") from None


def _flush_stdout() -> None:
    with writing_to("to stdout"):
        sys.stdout.flush()


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would complain about a closed pipe or a full disk; point it at /dev/null.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
