"""safetensors headers: tensor names, dtypes and shapes, read without the weights and checked against the file."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from llmctl.core.errors import ModelReadError
from llmctl.core.values import JSONInputError, as_int, loads_json

SafetensorsHeader = dict[str, tuple[str, tuple[int, ...]]]

# Bits per element of each safetensors dtype (the format's own table; F4 and F6 pack several per byte).
SAFETENSORS_DTYPE_BITS = {
    "F64": 64, "I64": 64, "U64": 64, "C64": 64, "F32": 32, "I32": 32, "U32": 32, "F16": 16, "BF16": 16,
    "I16": 16, "U16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "I8": 8, "U8": 8, "BOOL": 8,
    "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4,
}
_MAX_HEADER_BYTES = 100_000_000


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Tensor names, dtypes and shapes from one .safetensors file, reading only its header.

    The header is checked against the file as safetensors itself does on load: every tensor's byte span
    lies inside the file and holds exactly shape x dtype-size bytes, so a header cannot claim tensors
    the file does not hold (a 441 KiB file announcing a [10^12, 10^12] tensor).
    """
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > _MAX_HEADER_BYTES:
                raise ModelReadError(f"{path} has an implausible safetensors header ({size} bytes)")
            raw = fh.read(size)
            file_size = os.fstat(fh.fileno()).st_size
    except (OSError, struct.error) as err:
        raise ModelReadError(f"cannot read the safetensors header of {path}: {err}") from None
    if len(raw) < size:
        raise ModelReadError(f"{path}: the safetensors header is cut short ({len(raw)} of {size} bytes)")
    try:
        header = loads_json(raw)
    except JSONInputError as err:
        raise ModelReadError(f"{path}: the safetensors header is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise ModelReadError(f"{path}: the safetensors header must be a JSON object")
    data_bytes = file_size - 8 - size
    out: SafetensorsHeader = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        out[name] = _tensor_entry(path, name, info, data_bytes)
    return out


def _tensor_entry(path: Path, name: str, info: Any, data_bytes: int) -> tuple[str, tuple[int, ...]]:
    """(dtype, shape) of one header entry, after checking it against the data the file holds."""
    def bad(why: str) -> ModelReadError:
        return ModelReadError(f"{path}: tensor {name!r} in the safetensors header {why}",
                              hint="the file is corrupt or truncated: download it again")

    if not isinstance(info, dict):
        raise bad("is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BITS:
        raise bad(f"has an unknown dtype {dtype!r}")
    dims = [as_int(d) for d in shape] if isinstance(shape, list) else None
    if dims is None or any(d is None or d < 0 for d in dims):
        raise bad(f"has a bad shape {shape!r}")
    span = [as_int(o) for o in offsets] if isinstance(offsets, list) and len(offsets) == 2 else None
    if span is None or None in span or not 0 <= span[0] <= span[1]:
        raise bad(f"has bad data_offsets {offsets!r}")
    if span[1] > data_bytes:
        raise bad(f"ends at byte {span[1]:,} but the file holds {data_bytes:,} bytes of tensor data")
    numel = 1
    for d in dims:
        numel *= d
    if -(-numel * SAFETENSORS_DTYPE_BITS[dtype] // 8) != span[1] - span[0]:
        raise bad(f"has shape {tuple(dims)} ({dtype}) but {span[1] - span[0]:,} bytes of data")
    return dtype, tuple(dims)
