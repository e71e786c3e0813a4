"""Dequantisation of GGUF tensors in torch, vectorised over blocks (layouts from ggml-quants.c)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from llmctl.core.errors import UnsupportedModelError
from llmctl.core.gguf_meta import GGML_TYPE_IDS, GGML_TYPES

_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
_INT_TYPES = {"I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64}


# Speed notes (torch CPU): uint8 -> float is ~20x slower than int8 -> float, torch.stack is ~10x slower than
# torch.cat, and out-of-place broadcast ops pay for fresh pages; so codes are built as uint8 < 128, read as
# int8, converted once, and scaled in place.


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """One fp16 scalar per block at byte `start`, as (nb, 1) float32."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _codes(q: torch.Tensor) -> torch.Tensor:
    """Small unsigned codes (uint8, all < 128) -> float32 via the fast int8 conversion."""
    return q.contiguous().view(torch.int8).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(nb, n) bytes -> (nb, 2n): the n low nibbles, then the n high ones (ggml's order within a block)."""
    return torch.cat((qs & 0x0F, qs >> 4), dim=1)


def _bits(data: torch.Tensor) -> torch.Tensor:
    """(nb, n) bytes -> (nb, n, 8) bits, least significant first."""
    return torch.cat([(data >> i).unsqueeze(-1) & 1 for i in range(8)], dim=-1)


def _crumbs(data: torch.Tensor) -> torch.Tensor:
    """(nb, ..., n) bytes -> (nb, ..., 4, n): the four 2-bit fields, lowest first."""
    return torch.cat([((data >> (2 * i)) & 3).unsqueeze(-2) for i in range(4)], dim=-2)


def _q4_0(b: torch.Tensor) -> torch.Tensor:  # d:f16, qs[16]
    return _codes(_nibbles(b[:, 2:18])).sub_(8).mul_(_f16(b, 0))


def _q4_1(b: torch.Tensor) -> torch.Tensor:  # d:f16, m:f16, qs[16]
    return _codes(_nibbles(b[:, 4:20])).mul_(_f16(b, 0)).add_(_f16(b, 2))


def _q5_0(b: torch.Tensor) -> torch.Tensor:  # d:f16, qh[4] (bit j = high bit of element j), qs[16]
    high = _bits(b[:, 2:6]).reshape(-1, 32) << 4
    return _codes(_nibbles(b[:, 6:22]) | high).sub_(16).mul_(_f16(b, 0))


def _q5_1(b: torch.Tensor) -> torch.Tensor:  # d:f16, m:f16, qh[4], qs[16]
    high = _bits(b[:, 4:8]).reshape(-1, 32) << 4
    return _codes(_nibbles(b[:, 8:24]) | high).mul_(_f16(b, 0)).add_(_f16(b, 2))


def _q8_0(b: torch.Tensor) -> torch.Tensor:  # d:f16, qs int8[32]
    return b[:, 2:34].contiguous().view(torch.int8).float().mul_(_f16(b, 0))


def _q2_k(b: torch.Tensor) -> torch.Tensor:  # scales[16] (lo: scale, hi: min), qs[64], d:f16, dmin:f16
    nb = b.shape[0]
    # element n*128 + j*32 + l is bits 2j of qs[32n + l]; (n, j, l//16) indexes its scale
    q = _codes(_crumbs(b[:, 16:80].reshape(nb, 2, 32))).view(nb, 16, 16)
    sc = b[:, 0:16]
    scale = _codes(sc & 0x0F).mul_(_f16(b, 80)).unsqueeze(-1)  # (nb, 16, 1)
    minimum = _codes(sc >> 4).mul_(_f16(b, 82)).unsqueeze(-1)
    return q.mul_(scale).sub_(minimum).view(nb, 256)


def _q3_k_scales(sc: torch.Tensor) -> torch.Tensor:
    """12 bytes -> 16 six-bit scales less 32: low 4 bits from bytes 0..7, high 2 from bytes 8..11."""
    low = torch.cat((sc[:, 0:8] & 0x0F, sc[:, 0:8] >> 4), dim=1)  # (nb, 16)
    high = _crumbs(sc[:, 8:12]).reshape(-1, 16)  # scale i: byte 8 + i%4, bits 2*(i//4)
    return _codes(low | (high << 4)).sub_(32)


def _q3_k(b: torch.Tensor) -> torch.Tensor:  # hmask[32], qs[64], scales[12], d:f16
    nb = b.shape[0]
    low = _crumbs(b[:, 32:96].reshape(nb, 2, 32))  # (nb, 2, 4, 32)
    # element n*128 + j*32 + l: a 0 at bit (4n + j) of hmask[l] subtracts 4
    high = _bits(b[:, 0:32]).transpose(1, 2).reshape(nb, 2, 4, 32)
    q = _codes(low | (high << 2)).sub_(4).view(nb, 16, 16)
    scale = _q3_k_scales(b[:, 96:108]).mul_(_f16(b, 108)).unsqueeze(-1)
    return q.mul_(scale).view(nb, 256)


def _k_scale_min(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: d, dmin and 12 bytes of six-bit fields -> (nb, 8, 1) scales and mins (get_scale_min_k4)."""
    sc = b[:, 4:16]
    scale = torch.cat((sc[:, 0:4] & 63, (sc[:, 8:12] & 0x0F) | ((sc[:, 0:4] >> 6) << 4)), dim=1)
    minimum = torch.cat((sc[:, 4:8] & 63, (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)), dim=1)
    return _codes(scale).mul_(_f16(b, 0)).unsqueeze(-1), _codes(minimum).mul_(_f16(b, 2)).unsqueeze(-1)


def _q4_k(b: torch.Tensor) -> torch.Tensor:  # d:f16, dmin:f16, scales[12], qs[128]
    nb = b.shape[0]
    scale, minimum = _k_scale_min(b)
    # element j*64 + h*32 + l is nibble h of qs[32j + l], under scale/min 2j + h
    q = _codes(_nibbles(b[:, 16:144].reshape(nb * 4, 32))).view(nb, 8, 32)
    return q.mul_(scale).sub_(minimum).view(nb, 256)


def _q5_k(b: torch.Tensor) -> torch.Tensor:  # d:f16, dmin:f16, scales[12], qh[32], qs[128]
    nb = b.shape[0]
    scale, minimum = _k_scale_min(b)
    low = _nibbles(b[:, 48:176].reshape(nb * 4, 32)).view(nb, 8, 32)
    # the high bit of element (j, h, l) is bit 2j + h of qh[l]
    high = _bits(b[:, 16:48]).transpose(1, 2)  # (nb, 8, 32)
    q = _codes(low | (high << 4)).view(nb, 8, 32)
    return q.mul_(scale).sub_(minimum).view(nb, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:  # ql[128], qh[64], scales int8[16], d:f16
    nb = b.shape[0]
    # element n*128 + k*32 + l: nibble k//2 of ql[64n + (k%2)*32 + l], bits 2k of qh[32n + l]
    ql = b[:, 0:128].reshape(nb * 2, 64)
    low = _nibbles(ql).view(nb, 2, 4, 32)  # low nibbles of both halves (k = 0, 1), then high ones (k = 2, 3)
    high = _crumbs(b[:, 128:192].reshape(nb, 2, 32))  # (nb, 2, 4, 32)
    q = _codes(low | (high << 4)).sub_(32).view(nb, 16, 16)
    scale = b[:, 192:208].contiguous().view(torch.int8).float().mul_(_f16(b, 208)).unsqueeze(-1)
    return q.mul_(scale).view(nb, 256)


_DEQUANT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}
SUPPORTED_TYPES = tuple(_DEQUANT) + tuple(_FLOAT_TYPES) + tuple(_INT_TYPES)


def dequantize(
    raw: torch.Tensor, ggml_type: str | int, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Raw GGUF bytes (flat uint8, on any device) of one tensor -> values of `shape` (HF order) in `dtype`.

    Always returns a new tensor that owns its memory (never a view of `raw`)."""
    type_name = GGML_TYPES.get(ggml_type, ("",))[0] if isinstance(ggml_type, int) else ggml_type
    if type_name not in GGML_TYPE_IDS:
        raise UnsupportedModelError(f"unknown ggml type {ggml_type!r}")
    _, block, block_bytes = GGML_TYPES[GGML_TYPE_IDS[type_name]]
    n_elements = 1
    for dim in shape:
        n_elements *= int(dim)
    if raw.dtype != torch.uint8 or raw.dim() != 1 or raw.numel() != n_elements // block * block_bytes:
        raise UnsupportedModelError(
            f"{type_name} tensor of shape {tuple(shape)} needs {n_elements // block * block_bytes} uint8 bytes, "
            f"got {raw.numel()} {raw.dtype}"
        )
    if type_name in _FLOAT_TYPES or type_name in _INT_TYPES:
        src = _FLOAT_TYPES.get(type_name) or _INT_TYPES[type_name]
        values = raw.view(src) if raw.is_contiguous() else raw.contiguous().view(src)
        return values.to(dtype, copy=True).reshape(tuple(shape))
    if type_name not in _DEQUANT:
        raise UnsupportedModelError(
            f"GGUF tensors of type {type_name} are not supported; supported: {', '.join(SUPPORTED_TYPES)}"
        )
    blocks = raw.reshape(-1, block_bytes)  # (nb, block_bytes)
    values = _DEQUANT[type_name](blocks)  # (nb, block) float32
    return values.to(dtype).reshape(tuple(shape))
