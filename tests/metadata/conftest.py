"""Shared helpers for metadata tests: hub config.json fixtures and tiny model folders written by hand."""

import json
import math
import struct
from pathlib import Path

import pytest

CONFIG_DIR = Path(__file__).parent / "configs"

_DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1, "F8_E4M3": 1}


def hub_config(name: str) -> dict:
    """The config.json of a real hub checkpoint, as stored under tests/metadata/configs/<name>.json."""
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """A valid .safetensors file of zeros with the given (dtype, shape) per tensor, without torch."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * _DTYPE_SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def write_model(folder: Path, config: dict, tensors=None, files=None) -> Path:
    """A model folder: config.json, optional model.safetensors, optional extra JSON files (relative paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if tensors:
        write_safetensors(folder / "model.safetensors", tensors)
    for name, content in (files or {}).items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content))
    return folder


@pytest.fixture
def load_hub_config():
    return hub_config


@pytest.fixture
def make_model(tmp_path):
    """make_model(config, tensors=None, files=None, name="model") -> a folder under tmp_path."""

    def make(config, tensors=None, files=None, name="model"):
        return write_model(tmp_path / name, config, tensors, files)

    return make
