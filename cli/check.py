"""`llmctl check MODEL`: is this architecture supported, by what, and what blocks it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl.cli.options import (
    JsonOpt,
    MaxModelLenOpt,
    ModelArg,
    RevisionOpt,
    SourceOpt,
    Task,
    TrustRemoteCodeOpt,
    source_value,
)
from llmctl.cli.output import Output
from llmctl.core.errors import EXIT_ERROR


def check(
    model: ModelArg,
    task: Annotated[Optional[Task], typer.Option("--task", help="The task to check for (default: any).", show_default=False)] = None,
    max_model_len: MaxModelLenOpt = None,
    gpu_memory: Annotated[
        Optional[float], typer.Option("--gpu-memory", metavar="GIB", help="Say whether weights + KV cache fit in GIB.",
                                      min=0.0, show_default=False)
    ] = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    json_output: JsonOpt = False,
    revision: RevisionOpt = None,
    source: SourceOpt = None,
) -> None:
    """Say whether llmctl can run MODEL, how, and what blocks it (reads config files only; exit 0 = supported)."""
    from llmctl.core.estimate import kv_cache_bytes_per_token, parameter_count
    from llmctl.core.quant import quantization_from_source
    from llmctl.core.resolve import resolve_model
    from llmctl.core.spec import load_spec
    from llmctl.core.support import verdict

    src = resolve_model(model, revision=revision, source=source_value(source))
    spec = load_spec(src)
    quant = quantization_from_source(src)
    result = verdict(
        spec,
        quant,
        task=task.value if task is not None else None,
        trust_remote_code=trust_remote_code,
        max_model_len=max_model_len,
        gpu_memory_gib=gpu_memory,
        param_count=parameter_count(spec, src),
        kv_bytes_per_token=kv_cache_bytes_per_token(spec),
    )
    # what the config did not give in a form llmctl reads: those sizes, and what depends on them, are null
    data = {"model": src.display, **result.to_dict(), "unknown": list(spec.unknown)}
    Output(json_output).emit(data, _render)
    if not result.supported:
        raise typer.Exit(EXIT_ERROR)


def _render(console, data) -> None:
    from rich.table import Table

    ok = data["supported"]
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", data["model"])
    table.add_row("architecture", data["architecture"])
    table.add_row("supported", "[green]yes[/]" if ok else "[red]no[/]")
    impl = data["implementation"]
    table.add_row("implementation", "transformers backend" if impl == "transformers" else impl)
    table.add_row("verification", data["verification"])
    table.add_row("tasks", ", ".join(data["tasks"]) or "-")
    table.add_row("trust_remote_code", "needed" if data["needs_trust_remote_code"] else "not needed")
    quant = data["quantization"]
    table.add_row("quantization", "none" if quant is None else f"{quant['method']} ({'runs' if quant['supported'] else 'not runnable yet'})")
    mem = data["memory"]
    if mem:
        table.add_row("weights", _gib(mem["weight_bytes"]) + f" ({mem['weight_dtype']})")
        table.add_row("KV cache", f"{_gib(mem['kv_cache_bytes'])} at {mem['max_model_len']} tokens")
        if "fits" in mem:
            fits = "unknown" if mem["fits"] is None else "yes" if mem["fits"] else "no"
            table.add_row("fits", f"{fits} in {_gib(mem['gpu_memory_bytes'])}")
    else:
        table.add_row("memory", "unknown (no parameter count from this config)")
    if data.get("unknown"):
        table.add_row("unknown", ", ".join(data["unknown"]))
    console.print(table)
    if data.get("note"):
        console.print(f"  [cyan]•[/] {data['note']}")
    for reason in data["reasons"]:
        console.print(f"  [yellow]•[/] {reason}")


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 1024**3:.2f} GiB"
