"""The llmctl command-line app: wiring only; each command lives in its own module."""

from __future__ import annotations

import os
from typing import Annotated

import typer
import typer.core

# Plain Click help (rich_markup_mode=None below). Typer still rich-escapes "[default: ...]" into
# "\[default: ...]" when rich is installed, whatever the markup mode; tell it rich is not there.
typer.core.HAS_RICH = False

from llmctl import __version__
from llmctl.cli.bench import bench
from llmctl.cli.check import check
from llmctl.cli.config import config_app
from llmctl.cli.embed import embed
from llmctl.cli.generate import generate
from llmctl.cli.inspect_arch import inspect_arch
from llmctl.cli.output import handle_errors, set_debug
from llmctl.cli.quantize_info import quantize_info

app = typer.Typer(
    name="llmctl",
    help="Check, inspect and run language and embedding models.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain Click help: Typer's rich help costs ~0.4 s of imports per call
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (also LLMCTL_DEBUG=1).")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Check, inspect and run language and embedding models.

    Exit codes: 0 ok (check: supported), 1 error (check: not supported), 2 usage, 3 model not found or unreadable.
    """
    set_debug(debug)
    # stderr carries llmctl's diagnostics; transformers' deprecation chatter about checkpoint files is not one.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


app.command("check")(handle_errors(check))
app.command("inspect-arch")(handle_errors(inspect_arch))
app.command("quantize-info")(handle_errors(quantize_info))
app.command("generate")(handle_errors(generate))
app.command("embed")(handle_errors(embed))
app.command("bench")(handle_errors(bench))
app.add_typer(config_app, name="config")


def main() -> None:
    app(prog_name="llmctl")
