"""Where a model comes from and how it is built: its folder, config, architecture class, dtype, device and weights."""

from __future__ import annotations

from pathlib import Path

import torch

from llmctl.core.engine.tokenizer import is_gguf
from llmctl.core.errors import ModelReadError, UnsupportedModelError, UsageError

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
        config = PretrainedConfig(**d)
        config.model_type = d.get("model_type", "llama")
        return config
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as exc:
        raise ModelReadError(f"cannot read the config of {path}: {exc}") from exc


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
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda was asked for, but torch sees no CUDA device", hint="use device='cpu'")
    return dev


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
