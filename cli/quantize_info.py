"""`llmctl quantize-info MODEL`: how a checkpoint is quantized, and whether llmctl can run it now."""

from __future__ import annotations

from typing import Any

from llmctl.cli.options import JsonOpt, ModelArg, RevisionOpt, SourceOpt, source_value
from llmctl.cli.output import Output

_EMPTY = {"bits": None, "group_size": None, "symmetric": None, "zero_point": None, "act_order": None,
          "modules_not_quantized": [], "kernel": None, "reason": None, "min_compute_capability": None,
          "hardware": None, "size_vs_bf16": None, "source_file": None}


def quantize_info(
    model: ModelArg,
    json_output: JsonOpt = False,
    revision: RevisionOpt = None,
    source: SourceOpt = None,
) -> None:
    """Show a checkpoint's quantization (AWQ, GPTQ, FP8, bitsandbytes, compressed-tensors, GGUF) and what it needs."""
    from llmctl.core.quant import quantization_from_source
    from llmctl.core.resolve import resolve_model

    src = resolve_model(model, revision=revision, source=source_value(source))
    info = quantization_from_source(src)
    if info is None:
        config = src.read_json("config.json") or {}
        dtype = config.get("torch_dtype") or config.get("dtype")
        data: dict[str, Any] = {"model": src.display, "method": None, **_EMPTY, "supported": True,
                                "details": {"dtype": dtype} if dtype else {}}
    else:
        data = {"model": src.display, **info.to_dict()}
    Output(json_output).emit(data, _render)


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _render(console: Any, data: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    if data["method"] is None:
        dtype = data["details"].get("dtype")
        stored = f" (weights stored as {dtype})" if dtype else ""
        console.print(f"[bold]{escape(data['model'])}[/bold] is not quantized{stored}.")
        return
    details = data["details"]
    title = escape(f"{data['model']}: {data['method']} quantization")
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    variant = details.get("variant")
    table.add_row("Method", data["method"] + (f" ({variant})" if variant and variant != data["method"] else ""))
    if "scheme" in details:
        table.add_row("Scheme", str(details["scheme"]))
    table.add_row("Bits", "-" if data["bits"] is None else str(data["bits"]))
    group = data["group_size"]
    if "weight_scale" in details:
        group_text = str(details["weight_scale"])
    else:
        group_text = "-" if group is None else ("per channel" if group == -1 else str(group))
    table.add_row("Group size", group_text)
    table.add_row("Symmetric", _yes_no(data["symmetric"]))
    table.add_row("Zero point", _yes_no(data["zero_point"]))
    table.add_row("Act-order", _yes_no(data["act_order"]))
    for key, label in (("version", "AWQ version"), ("checkpoint_format", "Format"), ("format", "Format"),
                       ("quant_type", "4-bit type"), ("double_quant", "Double quant"),
                       ("compute_dtype", "Compute dtype"), ("activation_scheme", "Activations"),
                       ("file_type", "File type"), ("bits_per_weight", "Bits per weight")):
        if key in details:
            value = details[key]
            table.add_row(label, _yes_no(value) if isinstance(value, bool) else escape(str(value)))
    if "tensor_types" in details:
        types = ", ".join(f"{name} x{row['tensors']}" for name, row in details["tensor_types"].items())
        table.add_row("Tensor types", types)
    skipped = data["modules_not_quantized"]
    table.add_row("Not quantized", escape(", ".join(skipped)) if skipped else "-")
    table.add_row("Kernel", escape(data["kernel"] or "-"))
    can_run = "[green]yes[/green]" if data["supported"] else f"[red]no[/red]: {escape(data['reason'] or '')}"
    table.add_row("Runs in llmctl now", can_run)
    table.add_row("Hardware", escape(data["hardware"] or "-"))
    if data["size_vs_bf16"] is not None:
        scope = ("all tensors as stored; dequantised to the model dtype at load" if data["method"] == "gguf"
                 else "quantized weights with their scales and zeros; 16-bit layers not counted")
        table.add_row("Size vs bf16", f"{data['size_vs_bf16']:.3f}x ({scope})")
    table.add_row("Read from", data["source_file"] or "-")
    console.print(table)
