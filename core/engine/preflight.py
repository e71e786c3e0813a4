"""Checks before a model is built: its config's size against the checkpoint's tensors and the device's memory.

Building allocates every layer the config names; a config that asks for far more than the checkpoint
holds (or than the device has) must fail here, in a second, not after minutes of building layers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from llmctl.core.errors import LlmctlError, UnsupportedModelError, WeightLoadError

# Decoder-layer tensors in the checkpoints llmctl reads: model.layers.N. (Llama...), transformer.h.N. (GPT-2,
# BLOOM, Falcon), gpt_neox.layers.N., transformer.blocks.N. (MPT), model.decoder.layers.N. (OPT).
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
GIB = 1024**3


def check_before_build(path: Path, hf_config, dtype: torch.dtype, device: torch.device, load_format: str) -> None:
    """Raise when the checkpoint lacks layers the config names, or the weights cannot fit on the device."""
    from llmctl.core.engine.tokenizer import is_gguf

    if is_gguf(path):
        return  # the config is read from the file's own tensor table
    header = _safetensors_header(path) if load_format != "dummy" else None
    layers = getattr(hf_config, "num_hidden_layers", None)
    if header and isinstance(layers, int):
        found = {int(m.group(1)) for name in header for m in [_LAYER.search(name)] if m}
        if found and layers > max(found) + 1:
            raise WeightLoadError(
                f"config.json asks for {layers:,} layers but the checkpoint holds {max(found) + 1}",
                hint="the config does not belong to these weights",
            )
    needed = _weight_bytes(path, dtype)
    have = device_memory_bytes(device)
    if needed is not None and have is not None and needed > have:
        raise UnsupportedModelError(
            f"the weights alone need {needed / GIB:,.1f} GiB in {str(dtype).removeprefix('torch.')}, "
            f"more than the {have / GIB:,.1f} GiB of the {device.type} device",
            hint="check the config's sizes (`llmctl inspect-arch MODEL`), or use a smaller dtype or model",
        )


def _safetensors_header(path: Path):
    from llmctl.core.engine.loader import safetensors_files
    from llmctl.core.safetensors_header import read_safetensors_header

    header: dict = {}
    for file in safetensors_files(path):
        if file.is_file():
            header.update(read_safetensors_header(file))  # validated against the file's size
    return header


def _weight_bytes(path: Path, dtype: torch.dtype) -> int | None:
    """Bytes of the parameters the config describes, at `dtype`: what building the model will allocate."""
    from llmctl.core.estimate import parameter_count
    from llmctl.core.sources import LocalDirSource
    from llmctl.core.spec import load_spec

    try:
        spec = load_spec(LocalDirSource(str(path), path))
        count = parameter_count(spec)
    except LlmctlError:  # a family without a count formula: the loader's own checks still apply
        return None
    if count is None:
        return None
    return count.total * torch.empty((), dtype=dtype).element_size()


def device_memory_bytes(device: torch.device) -> int | None:
    """All the memory of `device` (a GPU's, or the machine's RAM for the CPU); None when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return None
