"""`llmctl embed`: one vector per input line (the embedding engine arrives with the embeddings issue)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import DeviceOpt, DtypeOpt, ModelOpt
from llmctl.core.errors import UnsupportedModelError


class EmbedFormat(str, Enum):
    jsonl = "jsonl"
    npy = "npy"
    csv = "csv"
    tsv = "tsv"


class Pooling(str, Enum):
    cls = "cls"
    mean = "mean"
    max = "max"
    lasttoken = "lasttoken"


def embed(
    file: Annotated[Optional[Path], typer.Argument(help="Input file, one text per line ('-' or nothing: stdin).")] = None,
    model: ModelOpt = None,
    output_format: Annotated[EmbedFormat, typer.Option("--format", help="Output format.")] = EmbedFormat.jsonl,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout (needed for npy).")] = None,
    with_text: Annotated[bool, typer.Option("--with-text", help="Add each input text to its record.")] = False,
    pooling: Annotated[Optional[Pooling], typer.Option("--pooling", help="Override the checkpoint's pooling.")] = None,
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="Override L2 normalisation.")] = None,
    prompt_name: Annotated[Optional[str], typer.Option("--prompt-name", help="A named prompt from the checkpoint.")] = None,
    instruction: Annotated[Optional[str], typer.Option("--instruction", help="e5-mistral style 'Instruct: ...' prefix.")] = None,
    dimensions: Annotated[Optional[int], typer.Option("--dimensions", min=1, help="Matryoshka truncation (renormalised).")] = None,
    query: Annotated[Optional[str], typer.Option("--query", help="Rank the input lines by cosine similarity to this text.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Texts per batch (length-sorted inside).")] = 64,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Turn text into vectors: one input per line in, one vector per line out, in input order."""
    raise UnsupportedModelError(
        "`llmctl embed` is not available yet: llmctl's embedding models (BERT, XLM-RoBERTa, decoder embedders) "
        "are still being built",
        hint="track the embeddings issue; `llmctl check MODEL --task embed` says what will be needed",
    )
