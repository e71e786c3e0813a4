"""Options shared by several commands, as Annotated aliases."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer


class Source(str, Enum):
    hf = "hf"
    modelscope = "modelscope"


class Task(str, Enum):
    generate = "generate"
    embed = "embed"


class ModelImpl(str, Enum):
    auto = "auto"
    native = "native"
    transformers = "transformers"


ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Local directory, .gguf file, Hugging Face repo id (repo@revision), ModelScope id, or alias.",
        show_default=False,
    ),
]
OptionalModelArg = Annotated[
    Optional[str],
    typer.Argument(
        metavar="[MODEL]",
        help="Model to use (default: the configured default model).",
        show_default=False,
    ),
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Model to use (default: the configured default model).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table (the default when piped).")]
RevisionOpt = Annotated[
    Optional[str], typer.Option("--revision", help="Hub revision: branch, tag or commit.", show_default=False)
]
SourceOpt = Annotated[
    Optional[Source],
    typer.Option("--source", help="Where repo ids are looked up (default hf; LLMCTL_USE_MODELSCOPE=true for modelscope).",
                 show_default=False),
]
TrustRemoteCodeOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow running code shipped in the model repo.")
]
DtypeOpt = Annotated[
    Optional[str],
    typer.Option("--dtype", help="auto, float32, bfloat16 or float16 (default: config, else auto).", show_default=False),
]
DeviceOpt = Annotated[
    Optional[str], typer.Option("--device", help="auto, cpu or cuda[:N] (default: config, else auto).", show_default=False)
]
ModelImplOpt = Annotated[
    ModelImpl,
    typer.Option("--model-impl", help="native: llmctl's own model definition; transformers: the transformers "
                 "backend inside llmctl's engine; auto: native when there is one, else transformers."),
]
EnforceEagerOpt = Annotated[
    bool,
    typer.Option("--enforce-eager", help="Run decode steps eagerly instead of replaying CUDA graphs (same tokens; "
                 "skips the start-up capture)."),
]
MaxModelLenOpt = Annotated[
    Optional[int], typer.Option("--max-model-len", help="Context length to plan for (default: the model's).",
                                show_default=False, min=1)
]


def source_value(source: Optional[Source]) -> Optional[str]:
    return source.value if source is not None else None
