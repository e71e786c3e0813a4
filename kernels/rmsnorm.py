"""RMSNorm, plain and fused with the residual add, Llama's and Gemma's: torch references (fp32 accumulation)."""

from __future__ import annotations

import torch

from llmctl.kernels.triton_compat import pdl_enabled, pdl_launch, pdl_trigger, pdl_wait, require_triton, tl, triton
from llmctl.kernels.tuning import row_block, row_warps


@triton.jit
def _rms_norm_kernel(
    # pointers
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    residual_out_ptr,
    # sizes
    hidden,
    eps,
    # strides (rows; the hidden dim is contiguous)
    stride_x,
    stride_r,
    stride_o,
    stride_ro,
    # meta-parameters
    HAS_RESIDUAL: tl.constexpr,
    GEMMA: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    """One row per program. x, residual (rows, hidden); weight (hidden,); out (rows, hidden).

    With HAS_RESIDUAL, x + residual (rounded to x's dtype) goes to residual_out and is what gets normalised.
    Statistics in float32; the normalised row is rounded to x's dtype before the weight multiplies it, or with
    GEMMA it is multiplied by (1 + weight) in float32 and rounded once at the end.
    """
    pdl_trigger(PDL)
    pdl_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(residual_out_ptr + row * stride_ro + cols, x.to(residual_out_ptr.dtype.element_ty), mask=mask)
    x32 = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, axis=0) / hidden + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if GEMMA:
        y = x32 * rstd * (1.0 + w)
    else:
        y = (x32 * rstd).to(x.dtype).to(tl.float32) * w
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x2d, residual2d, weight, out2d, residual_out2d, eps: float, gemma: bool = False) -> None:
    rows, hidden = x2d.shape
    if rows == 0:
        return
    block = row_block(hidden)
    has_res = residual2d is not None
    pdl = pdl_enabled(x2d.device)
    _rms_norm_kernel[(rows,)](
        x2d,
        residual2d if has_res else x2d,
        weight,
        out2d,
        residual_out2d if has_res else out2d,
        hidden,
        eps,
        x2d.stride(0),
        residual2d.stride(0) if has_res else 0,
        out2d.stride(0),
        residual_out2d.stride(0) if has_res else 0,
        HAS_RESIDUAL=has_res,
        GEMMA=gemma,
        BLOCK=block,
        PDL=pdl,
        num_warps=row_warps(block),
        **pdl_launch(pdl),
    )


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    require_triton()
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match hidden size {x.shape[-1]}")
    if not x.is_floating_point() or not weight.is_floating_point():
        raise TypeError(f"rms_norm needs floating tensors, got {x.dtype} and {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"x on {x.device} but weight on {weight.device}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, gemma: bool = False) -> torch.Tensor:
    """Triton rms_norm_ref (gemma_rms_norm_ref with gemma=True): same signature and result, one pass per row."""
    _check(x, weight)
    x2d = x.reshape(-1, x.shape[-1])  # (rows, H); a view when the last dim is contiguous
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    out_dtype = x.dtype if gemma else torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    _launch(x2d, None, weight.contiguous(), out.view(-1, x.shape[-1]), None, eps, gemma)
    return out


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton gemma_rms_norm_ref."""
    return rms_norm(x, weight, eps, gemma=True)


def gemma_fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton gemma_fused_add_rms_norm_ref, in place where the buffers allow it."""
    return fused_add_rms_norm(x, residual, weight, eps, gemma=True)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, *, gemma: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton fused_add_rms_norm_ref, in place as vLLM's: residual <- x + residual and x <- the norm.

    The in-place writes happen where the buffers allow it (contiguous, matching dtypes); otherwise new
    tensors come back. Either way the returned pair equals the reference's, so callers use the return value.
    """
    _check(x, weight)
    if residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
    hidden = x.shape[-1]
    out_dtype = x.dtype if gemma else torch.promote_types(x.dtype, weight.dtype)
    x_c = x if x.is_contiguous() else x.contiguous()
    r_c = residual if residual.is_contiguous() else residual.contiguous()
    new_residual = residual if (residual.is_contiguous() and residual.dtype == x.dtype) else torch.empty_like(x_c)
    out = x if (x.is_contiguous() and out_dtype == x.dtype) else torch.empty(x.shape, dtype=out_dtype, device=x.device)
    _launch(
        x_c.view(-1, hidden),
        r_c.view(-1, hidden),
        weight.contiguous(),
        out.view(-1, hidden),
        new_residual.view(-1, hidden),
        eps,
        gemma,
    )
    return out, new_residual


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y = weight * x / sqrt(mean(x^2) + eps) over the last dim; x (..., H), weight (H,).

    The statistics are taken in float32 and the normalised value is cast back to x's dtype before
    the weight multiplies it, as transformers' LlamaRMSNorm does.
    """
    x32 = x.float()
    variance = x32.pow(2).mean(dim=-1, keepdim=True)  # (..., 1)
    return weight * (x32 * torch.rsqrt(variance + eps)).to(x.dtype)


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """new_residual = x + residual; returns (rms_norm(new_residual), new_residual), both (..., H)."""
    new_residual = (x.float() + residual.float()).to(x.dtype)
    return rms_norm_ref(new_residual, weight, eps), new_residual


def gemma_rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + weight), all in float32, rounded to x's dtype once.

    Gemma checkpoints store weight - 1, and transformers multiplies by (1 + weight) in float32 before the cast
    (transformers PR 29402): half-precision outputs round differently from Llama's norm.
    """
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., H)
    return (x32 * (1.0 + weight.float())).to(x.dtype)


def gemma_fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """new_residual = x + residual in x's dtype (as transformers adds its residual stream); (norm, new_residual)."""
    new_residual = (x.float() + residual.float()).to(x.dtype)
    return gemma_rms_norm_ref(new_residual, weight, eps), new_residual
