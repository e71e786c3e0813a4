"""Where a model comes from and how it is built: its folder, config, architecture class, dtype, device and weights."""

from __future__ import annotations

from pathlib import Path

import torch

from llmctl.core.config_check import validate_config
from llmctl.core.engine.tokenizer import is_gguf
from llmctl.core.errors import InvalidValueError, ModelReadError, UnsupportedModelError, UsageError
from llmctl.core.values import parse_device

_DTYPES = {
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}  # fmt: skip


def resolve_model_path(model: str | Path, revision: str | None = None) -> Path:
    """A local model folder or .gguf file for `model` (a path, alias, or hub / ModelScope id)."""
    from llmctl.core.resolve import resolve_model

    return Path(resolve_model(str(model), revision=revision).materialize())


_TASK_WORDS = {  # task -> (what the model must be, where to go instead)
    "generate": ("a text-generation", "use task='embed' / `llmctl embed` for embedding models"),
    "embed": ("an embedding", "use task='generate' / `llmctl generate` for text-generation models"),
}


def model_class(architectures: list[str] | None, task: str = "generate") -> type[torch.nn.Module]:
    """The model_def class the registry names for an HF `architectures` list, for `task` (generate | embed)."""
    from llmctl.core import registry

    if not architectures:
        raise ModelReadError("config.json has no 'architectures' entry: cannot tell which model to build")
    row = registry.get_arch(architectures[0])
    if task not in row.tasks:
        what, hint = _TASK_WORDS[task]
        raise UnsupportedModelError(
            f"{row.architecture} is not {what} model (tasks: {', '.join(row.tasks)})", hint=hint
        )
    return registry.load_model_class(row)


def select_model_class(hf_config, model_impl: str = "auto", trust_remote_code: bool = False) -> type[torch.nn.Module]:
    """The model class for model_impl auto | native | transformers (registry.implementation_for decides).

    "native" goes through model_class(); "transformers" is model_defs/transformers_backend.py's class,
    which builds the transformers model from hf_config and runs it inside llmctl's engine.
    """
    from llmctl.core import registry

    architectures = getattr(hf_config, "architectures", None)
    if not architectures:
        raise ModelReadError("config.json has no 'architectures' entry: cannot tell which model to build")
    auto_map = getattr(hf_config, "auto_map", None) or {}
    remote = "AutoModelForCausalLM" in auto_map and not registry.transformers_has(architectures[0])
    impl = registry.implementation_for(
        architectures[0], model_impl, model_type=getattr(hf_config, "model_type", None),
        remote_code=remote, trust_remote_code=trust_remote_code, config=hf_config.to_dict(),
    )  # fmt: skip
    if impl == "native":
        return model_class(architectures)
    from llmctl.model_defs import transformers_backend

    backend = transformers_backend
    return backend.TransformersRemoteForCausalLM if remote else backend.TransformersForCausalLM


def load_hf_config(path: Path, *, trust_remote_code: bool = False, revision: str | None = None):
    """A transformers PretrainedConfig for a model folder, or built from a GGUF file's metadata.

    For GGUF the metadata already spells out every field the model_defs read, so a plain
    PretrainedConfig carries it: importing transformers' per-model config classes costs seconds.
    """
    if is_gguf(path):
        from transformers import PretrainedConfig

        from llmctl.core.engine.gguf_loader import gguf_hf_config

        d = {k: v for k, v in gguf_hf_config(path).items() if v is not None or k != "rope_scaling"}
        validate_config(d, f"{path} (GGUF metadata)")
        config = PretrainedConfig(**d)
        config.model_type = d.get("model_type", "llama")
        return config
    raw = _checked_config(path)
    native = None if trust_remote_code else _native_remote_config(raw)
    if native is not None:
        return native
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, revision=revision)
    except Exception as exc:  # transformers' own validation: ValueError, StrictDataclass errors, KeyError, ...
        _raise_unknown_type(raw, trust_remote_code)
        raise ModelReadError(f"cannot read the config of {path}: {_one_line(exc)}") from exc


def _native_remote_config(raw: dict):
    """A PretrainedConfig for a checkpoint whose model_type transformers does not know (its config class lives in
    the repo, auto_map) but whose architecture llmctl runs natively (InternLM, Baichuan, ChatGLM, Qwen v1):
    config.json over the family's defaults (the repo config class's, core/config_keys.py), so the repo's code need
    not run and --trust-remote-code is not needed (given, the repo's config class reads it, as
    model_impl="transformers" with the repo's model code needs). None otherwise."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from llmctl.core import registry
    from llmctl.core.config_keys import DEFAULTS, family_of, with_defaults

    archs = raw.get("architectures")
    model_type = raw.get("model_type")
    if not (isinstance(archs, list) and archs and isinstance(archs[0], str) and isinstance(model_type, str)):
        return None
    if not model_type or model_type in CONFIG_MAPPING_NAMES:
        return None
    row = registry.lookup(archs[0])
    if row is None or row.status != "native":
        return None
    from transformers import PretrainedConfig

    # A class of the model_type's name: to_dict() (what `check` reads back) writes the class's model_type.
    config_class = type(f"{archs[0]}Config", (PretrainedConfig,), {"model_type": model_type})
    return config_class(**with_defaults(raw, DEFAULTS.get(family_of(model_type, archs[0]), {})))


def _checked_config(path: Path) -> dict:
    """config.json, parsed and validated as the metadata commands do (core/config_check.py), before transformers
    sees it: a bad value gets the same one-line error from `generate` as from `check` (exit 3)."""
    from llmctl.core.sources import parse_json_bytes

    file = path / "config.json"
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ModelReadError(f"cannot read {file}: {exc.strerror or exc}") from None
    config = parse_json_bytes(raw, str(file))
    validate_config(config, str(file))
    return config


def _raise_unknown_type(config: dict, trust_remote_code: bool) -> None:
    """An architecture neither llmctl nor the installed transformers knows: say so in one line, and what to try."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type in CONFIG_MAPPING_NAMES:
        return
    if config.get("auto_map") and not trust_remote_code:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is defined by code in the model's repo",
            hint="pass --trust-remote-code (trust_remote_code=True) if you trust it; `llmctl check MODEL` says more",
        )
    archs = config.get("architectures")
    name = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else model_type
    raise UnsupportedModelError(
        f"architecture {name} (model_type {model_type!r}) is not supported: llmctl has no definition for it and "
        "the installed transformers does not know it",
        hint="`llmctl check MODEL` says what is supported; a newer transformers may know it",
    )


def _one_line(exc: BaseException) -> str:
    """The informative line of a (possibly multi-line) exception message: transformers' validators put the
    reason on a later line ("ValueError: The hidden size (385) is not a multiple of ...")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    for line in lines:
        if line.split(":", 1)[0].endswith(("Error", "Exception")):
            return line
    return lines[0]


def resolve_dtype(dtype: str | torch.dtype, hf_config, device: torch.device) -> torch.dtype:
    """dtype "auto" is the checkpoint's torch_dtype on CUDA; on CPU, float32 when that is bf16/fp16.

    (CPU matmuls in half precision are slow and less exact; float32 is what the CPU tests compare.)
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise UsageError(f"unknown dtype {dtype!r}", hint=f"use auto or one of {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    ckpt = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if isinstance(ckpt, str):
        ckpt = _DTYPES.get(ckpt)
    if not isinstance(ckpt, torch.dtype) or ckpt not in (torch.float32, torch.float16, torch.bfloat16):
        ckpt = torch.float32
    if device.type == "cpu":
        return torch.float32
    return ckpt


def resolve_device(device: str | torch.device) -> torch.device:
    """auto, cpu, cuda or cuda:N (a torch.device too) -> a device torch has; InvalidValueError otherwise."""
    if isinstance(device, torch.device):
        kind, index = device.type, device.index
    else:
        kind, index = parse_device(device)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("device cuda was asked for, but torch sees no CUDA device", hint="use device='cpu'")
        if index is not None and index >= torch.cuda.device_count():
            raise InvalidValueError(
                f"device cuda:{index} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s)",
                hint=f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}",
            )
    elif kind != "cpu":
        raise InvalidValueError(f"device {device} is not one llmctl runs on", hint="use auto, cpu or cuda[:N]")
    return torch.device(kind if index is None else f"{kind}:{index}")


def weights_for(path: Path, load_format: str, dtype: torch.dtype):
    """The (hf_name, tensor) iterator for load_format, or None for dummy weights."""
    from llmctl.core.engine import loader

    if load_format == "dummy":
        return None
    if is_gguf(path):
        if load_format not in ("auto", "gguf"):
            raise UsageError(f"load_format={load_format} does not apply to a .gguf file")
        from llmctl.core.engine.gguf_loader import iter_gguf_weights

        return iter_gguf_weights(path, dtype)
    table = {"auto": loader.iter_checkpoint, "safetensors": loader.iter_safetensors, "pt": loader.iter_torch_bin}
    if load_format not in table:
        raise UsageError(f"unknown load_format {load_format!r}", hint="use auto, safetensors, pt, gguf or dummy")
    return table[load_format](path)


def generation_config(path: Path):
    if is_gguf(path) or not (path / "generation_config.json").is_file():
        return None
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(path))
    except (OSError, ValueError):
        return None
