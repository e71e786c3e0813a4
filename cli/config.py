"""`llmctl config show`: the settings in force and where each came from."""

from __future__ import annotations

import typer

from llmctl.cli.options import JsonOpt
from llmctl.cli.output import Output, handle_errors

config_app = typer.Typer(help="Show llmctl's settings (YAML config, aliases, defaults).", no_args_is_help=True)


@config_app.command("show")
@handle_errors
def show(json_output: JsonOpt = False) -> None:
    """Print the settings in force (defaults, dtype, device, aliases) and where each came from."""
    from llmctl.core.settings import config_path, load_settings

    settings = load_settings()
    data = {
        "config_file": str(settings.path or config_path()),
        "config_file_exists": settings.path is not None,
        "default_model": {"value": settings.default_model, "from": settings.origins["default_model"]},
        "default_embed_model": {"value": settings.default_embed_model, "from": settings.origins["default_embed_model"]},
        "dtype": {"value": settings.dtype, "from": settings.origins["dtype"]},
        "device": {"value": settings.device, "from": settings.origins["device"]},
        "kv_cache_memory": {"value": settings.kv_cache_memory, "from": settings.origins["kv_cache_memory"]},
        "aliases": {
            name: {"value": target, "from": settings.origins.get(f"aliases.{name}", "built-in")}
            for name, target in sorted(settings.aliases.items())
        },
    }
    Output(json_output).emit(data, _render)


def _render(console, data) -> None:
    from rich.table import Table

    console.print(f"config file: {data['config_file']}" + ("" if data["config_file_exists"] else " (not present)"))
    table = Table("setting", "value", "from")
    for key in ("default_model", "default_embed_model", "dtype", "device", "kv_cache_memory"):
        table.add_row(key, str(data[key]["value"]), data[key]["from"])
    for name, entry in data["aliases"].items():
        table.add_row(f"alias {name}", entry["value"], entry["from"])
    console.print(table)
