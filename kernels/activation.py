"""Gated activations over a fused gate_up projection: torch references."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmctl.kernels.triton_compat import require_triton, tl, triton
from llmctl.kernels.tuning import row_block, row_warps

_MAX_BLOCK = 4096  # columns per program; wider rows use several programs


@triton.jit
def _act_and_mul_kernel(
    # pointers
    x_ptr,
    out_ptr,
    # sizes
    inter,
    # strides (rows; columns are contiguous)
    stride_x,
    stride_o,
    # meta-parameters
    GELU_TANH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """x (rows, 2*inter) = [gate | up] -> out (rows, inter) = act(gate) * up; grid (rows, cdiv(inter, BLOCK)).

    The activation is computed in float32 and rounded to x's dtype before the product, as torch does.
    """
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate_in = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    gate = gate_in.to(tl.float32)
    if GELU_TANH:
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)  # sqrt(2/pi) * (g + 0.044715 g^3)
        act = 0.5 * gate * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))  # tanh(z) = 2 sigmoid(2z) - 1
    else:
        act = gate * tl.sigmoid(gate)
    act = act.to(gate_in.dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def _act_and_mul(x: torch.Tensor, gelu_tanh: bool) -> torch.Tensor:
    require_triton()
    if not x.is_floating_point():
        raise TypeError(f"activation needs a floating tensor, got {x.dtype}")
    if x.shape[-1] % 2:
        raise ValueError(f"gate_up last dim {x.shape[-1]} is odd")
    inter = x.shape[-1] // 2
    x2d = x.reshape(-1, x.shape[-1])  # (rows, 2*I)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    out = torch.empty(*x.shape[:-1], inter, dtype=x.dtype, device=x.device)
    rows = x2d.shape[0]
    if rows == 0 or inter == 0:
        return out
    block = min(row_block(inter), _MAX_BLOCK)
    grid = (rows, triton.cdiv(inter, block))
    _act_and_mul_kernel[grid](
        x2d, out, inter, x2d.stride(0), inter, GELU_TANH=gelu_tanh, BLOCK=block, num_warps=row_warps(block)
    )
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Triton silu_and_mul_ref: one pass over the fused gate_up output."""
    return _act_and_mul(x, gelu_tanh=False)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Triton gelu_tanh_and_mul_ref: one pass over the fused gate_up output."""
    return _act_and_mul(x, gelu_tanh=True)


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """x (..., 2*I) holds [gate | up]; returns silu(gate) * up, (..., I)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def gelu_tanh_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """x (..., 2*I) holds [gate | up]; returns gelu_tanh(gate) * up, (..., I)."""
    gate, up = x.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up
