"""Torch dequantisation of every supported ggml type against gguf-py's numpy reference (gguf.quants)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from llmctl.core.engine.gguf_dequant import dequantize
from llmctl.core.errors import UnsupportedModelError

gguf = pytest.importorskip("gguf")
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants  # noqa: E402

# where each block type keeps its fp16 scale(s): random bytes there would give inf/nan, so they get sane values
SCALE_OFFSETS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}
QUANTIZABLE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")  # gguf-py can quantize these itself
ROWS = (1, 3, 33)  # awkward row counts
BLOCKS_PER_ROW = (1, 3)


def random_blocks(name: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes for every field (all code paths), with finite fp16 scales of either sign."""
    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    raw = rng.integers(0, 256, size=(rows, cols // block * block_bytes), dtype=np.uint8)
    blocks = raw.reshape(-1, block_bytes)
    for offset in SCALE_OFFSETS[name]:
        scales = rng.uniform(-2, 2, size=(blocks.shape[0], 1)).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8)
    return raw


def check(raw: np.ndarray, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> None:
    expected = torch.from_numpy(np.ascontiguousarray(quants.dequantize(raw, GGMLQuantizationType[name])))
    got = dequantize(torch.from_numpy(raw.reshape(-1).copy()), name, shape, dtype)
    assert got.shape == torch.Size(shape) and got.dtype == dtype
    # same float32 arithmetic up to operation order: a few ulps relative to the tensor's scale
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(got.float(), expected.to(dtype).float(), rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("name", sorted(SCALE_OFFSETS))
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("blocks_per_row", BLOCKS_PER_ROW)
def test_random_blocks_match_reference(name: str, rows: int, blocks_per_row: int) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{name}/{rows}/{blocks_per_row}".encode()))
    block = GGML_QUANT_SIZES[GGMLQuantizationType[name]][0]
    raw = random_blocks(name, rows, block * blocks_per_row, rng)
    check(raw, name, (rows, block * blocks_per_row))


@pytest.mark.parametrize("name", QUANTIZABLE)
@pytest.mark.parametrize("rows", ROWS)
def test_quantized_weights_match_reference(name: str, rows: int) -> None:
    rng = np.random.default_rng(rows)
    values = rng.standard_normal((rows, 96)).astype(np.float32) * 0.05
    packed = quants.quantize(values, GGMLQuantizationType[name])
    check(packed, name, (rows, 96))
    # and the round trip is close to the original (sanity check that the data is meaningful)
    got = dequantize(torch.from_numpy(packed.reshape(-1).copy()), name, (rows, 96))
    assert float((got - torch.from_numpy(values)).abs().max()) < 0.1 * float(np.abs(values).max())


@pytest.mark.parametrize("name", ("F32", "F16", "BF16"))
@pytest.mark.parametrize("shape", ((7,), (3, 33), (1, 5, 4)))
def test_float_types(name: str, shape: tuple[int, ...]) -> None:
    values = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    qtype = GGMLQuantizationType[name]
    if name == "F32":
        raw = values.view(np.uint8)
    elif name == "F16":
        raw = values.astype(np.float16).view(np.uint8)
    else:
        raw = quants.quantize(values, qtype)
    check(np.ascontiguousarray(raw), name, shape)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_output_dtype(dtype: torch.dtype) -> None:
    raw = random_blocks("Q4_K", 5, 256, np.random.default_rng(2))
    check(raw, "Q4_K", (5, 256), dtype)


def test_accepts_type_ids_and_owns_memory() -> None:
    values = np.arange(12, dtype=np.float32)
    raw = torch.from_numpy(values.view(np.uint8).copy())
    out = dequantize(raw, int(GGMLQuantizationType.F32), (3, 4))
    out.add_(1)  # must not write through to raw
    assert torch.equal(raw.view(torch.float32), torch.from_numpy(values))


def test_wrong_byte_count_and_unsupported_type() -> None:
    with pytest.raises(UnsupportedModelError, match="needs 20"):
        dequantize(torch.zeros(19, dtype=torch.uint8), "Q4_1", (32,))
    with pytest.raises(UnsupportedModelError, match="IQ2_XXS"):
        dequantize(torch.zeros(66, dtype=torch.uint8), "IQ2_XXS", (256,))
    with pytest.raises(UnsupportedModelError, match="unknown ggml type"):
        dequantize(torch.zeros(4, dtype=torch.uint8), "Q9_9", (1,))
    with pytest.raises(UnsupportedModelError, match="unknown ggml type"):
        dequantize(torch.zeros(4, dtype=torch.uint8), 99, (1,))
