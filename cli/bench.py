"""`llmctl bench`: load time, TTFT, decode and batch throughput (or embedding sentences/s) on llmctl's engine."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated, Any, Optional

import typer

from llmctl.cli.options import DeviceOpt, DtypeOpt, EnforceEagerOpt, JsonOpt, MaxModelLenOpt, ModelArg
from llmctl.cli.output import Output


class Against(str, Enum):
    transformers = "transformers"


def bench(
    model: ModelArg,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Random weights from config.json alone: no checkpoint or tokenizer needed.")] = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Prompts decoded together for the batch throughput (default 8); embedding models: sequences per batch on both sides (default 64).", show_default=False)] = None,
    input_len: Annotated[int, typer.Option("--input-len", min=1, help="Prompt length in tokens (random token ids).")] = 128,
    output_len: Annotated[int, typer.Option("--output-len", min=2, help="New tokens per prompt (EOS ignored).")] = 128,
    num_prompts: Annotated[Optional[int], typer.Option("--num-prompts", min=1, help="Prompts for the offline throughput (default: 1000 on CUDA, 4 x batch-size on CPU); embedding models: inputs embedded (default: 10000 on CUDA, 4 x batch-size on CPU).", show_default=False)] = None,
    against: Annotated[Optional[Against], typer.Option("--against", help="Also run this implementation on the same weights.", show_default=False)] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Time-to-first-token runs (the median is reported).")] = 5,
    json_output: JsonOpt = False,
    enforce_eager: EnforceEagerOpt = False,
    max_model_len: MaxModelLenOpt = None,
    max_num_seqs: Annotated[Optional[int], typer.Option("--max-num-seqs", min=1, help="llmctl's engine: most sequences decoded together (default: max(256, --batch-size)).", show_default=False)] = None,
    min_len: Annotated[int, typer.Option("--min-len", min=1, help="Embedding models: shortest input in tokens.")] = 16,
    max_len: Annotated[int, typer.Option("--max-len", min=1, help="Embedding models: longest input in tokens (clipped to the model's positions).")] = 512,
) -> None:
    """Measure load time, time to first token, decode tok/s and throughput of MODEL on llmctl's engine.

    With --against transformers, transformers runs the same weights in the same process with the same
    protocol, and the ratio llmctl/transformers is shown (above 1 is faster for tok/s, slower for times).
    Embedding models (BertModel, XLMRobertaModel, decoder embedders) are measured in sentences/s over
    --num-prompts random token-id inputs of lengths uniform in [--min-len, --max-len], beside
    transformers' AutoModel on padded batches, with the cosine similarity of the two sides' vectors.
    Progress goes to stderr; with --json (or when piped) stdout holds one JSON object.
    """
    from llmctl.core.bench import BenchConfig, run_bench
    from llmctl.core.settings import load_settings

    settings = load_settings()
    cfg = BenchConfig(
        model=model, random_weights=random_weights, dtype=dtype or settings.dtype or "auto",
        device=device or settings.device or "auto", batch_size=batch_size, input_len=input_len,
        output_len=output_len, num_prompts=num_prompts, against=against.value if against else None,
        enforce_eager=enforce_eager, max_model_len=max_model_len, max_num_seqs=max_num_seqs, repeats=repeats,
        kv_cache_memory=settings.kv_cache_memory, embed_min_len=min_len, embed_max_len=max_len,
    )  # fmt: skip
    out = Output(json_output)
    result = run_bench(cfg, log=_progress)
    out.emit(result, render)


def _progress(message: str) -> None:
    sys.stderr.write(f"llmctl bench: {message}\n")
    sys.stderr.flush()


_ROWS = (
    # (label, key, format, better)
    ("load (s)", "load_s", "{:.2f}", "lower"),
    ("engine init incl. load (s)", "init_s", "{:.2f}", "lower"),
    ("CUDA graph capture (s)", "cuda_graph_capture_s", "{:.2f}", "lower"),
    ("time to first token (ms)", "ttft_ms", "{:.1f}", "lower"),
    ("decode, batch 1 (tok/s)", "decode_tok_s", "{:.1f}", "higher"),
    ("batch output (tok/s)", "batch_output_tok_s", "{:.1f}", "higher"),
    ("offline output (tok/s)", "offline_output_tok_s", "{:.1f}", "higher"),
    ("offline total (tok/s)", "offline_total_tok_s", "{:.1f}", "higher"),
    ("peak GPU memory (GiB)", "peak_gpu_memory_gib", "{:.2f}", "lower"),
)


def _fmt(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


_EMBED_ROWS = (
    ("load (s)", "load_s", "{:.2f}", "lower"),
    ("sentences/s", "sentences_per_s", "{:.1f}", "higher"),
    ("tokens/s", "tokens_per_s", "{:.0f}", "higher"),
    ("elapsed (s)", "elapsed_s", "{:.2f}", "lower"),
    ("peak GPU memory (GiB)", "peak_gpu_memory_gib", "{:.2f}", "lower"),
)


def _table(data: dict[str, Any], rows):
    from rich.table import Table

    hf = data.get("transformers")
    ratio = data.get("ratio_llmctl_over_transformers") or {}
    table = Table(show_edge=False, header_style="bold")
    table.add_column("metric")
    table.add_column("llmctl", justify="right")
    if hf is not None:
        table.add_column("transformers", justify="right")
        table.add_column("llmctl/transformers", justify="right")
    for label, key, fmt, better in rows:
        row = [label, _fmt(data["llmctl"].get(key), fmt)]
        if hf is not None:
            r = ratio.get(key)
            row += [_fmt(hf.get(key), fmt), "-" if r is None else f"{r:.2f}x ({better} is better)"]
        table.add_row(*row)
    return table


def _header(console, data: dict[str, Any], kind: str, protocol: str) -> None:
    """Two lines: what ran where, then the protocol and the versions."""
    console.print(
        f"[bold]{data['model']}[/bold] ({data['weights']} weights{kind}) on {data['device']} "
        f"({data['device_name']}), {data['dtype']}",
        highlight=False,
    )
    console.print(
        f"{protocol}; torch {data['torch_version']}, transformers {data['transformers_version']}, {data['date']}",
        highlight=False,
    )


def render(console, data: dict[str, Any]) -> None:
    if data.get("task") == "embed":
        render_embed(console, data)
        return
    s = data["settings"]
    _header(console, data, "", f"input {s['input_len']} / output {s['output_len']} tokens, batch {s['batch_size']}, "
            f"offline {s['num_prompts']} prompts")
    console.print(_table(data, _ROWS))
    if data.get("greedy_tokens_matching") is not None:
        console.print(
            f"greedy decode: the first {data['greedy_tokens_matching']} of {s['output_len']} tokens agree",
            highlight=False,
        )


def render_embed(console, data: dict[str, Any]) -> None:
    s = data["settings"]
    _header(console, data, ", embeddings", f"{s['num_prompts']} inputs of {s['min_len']}-{s['max_len']} tokens, "
            f"batch {s['batch_size']}, {s['pooling']} pooling{', normalised' if s['normalize'] else ''}")
    console.print(_table(data, _EMBED_ROWS))
    cos = data.get("cosine_similarity")
    if cos is not None:
        console.print(
            f"cosine similarity llmctl vs transformers on the first {cos['inputs']} inputs: "
            f"min {cos['min']:.6f}, mean {cos['mean']:.6f}",
            highlight=False,
        )
