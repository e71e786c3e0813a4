"""Small-M linear layers (GEMV, M <= 8 rows) with fused prologues: RMSNorm (+ residual add) or act-and-mul."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmctl.kernels.activation import gelu_tanh_and_mul, gelu_tanh_and_mul_ref, silu_and_mul, silu_and_mul_ref
from llmctl.kernels.rmsnorm import _check as _check_norm
from llmctl.kernels.rmsnorm import _launch as _launch_norm
from llmctl.kernels.rmsnorm import fused_add_rms_norm_ref, rms_norm, rms_norm_ref
from llmctl.kernels.triton_compat import pdl_enabled, pdl_launch, pdl_trigger, pdl_wait, require_triton, tl, triton
from llmctl.kernels.tuning import GemvLaunch, gemv_launch

GEMV_MAX_M = 8  # rows the GEMV kernel can take (an explicit `launch=` uses it up to here)
# Rows up to which the ops choose the GEMV over cuBLAS by default: at 4 and 8 rows cuBLAS (tensor cores) won most
# H100 shapes (kernels/tuning.py's sweep notes); at 1-2 rows the GEMV won every shape.
GEMV_ROWS = 2
# The norm prologue re-reads x (and the residual) in every program: past this many weight bytes (Llama-3-8B's qkv
# 48 MiB, gate_up 224 MiB) the separate norm kernel + GEMV measured faster; below it (Qwen2.5-0.5B) the fused one.
NORM_PROLOGUE_MAX_BYTES = 32 << 20
# Every GEMV launches with programmatic dependent launch (PDL) on Hopper. Below this size a projection is latency-bound:
# it lets the next kernel launch at once and loads its first weight tile before waiting (Qwen2.5-0.5B decode 1,134 ->
# 1,146 tok/s on an H100). From this size on it only waits (launched early, it is resident when the kernel before it
# ends): letting the next kernel launch early, or the extra tile in flight, cost the bandwidth-bound ones (Llama-3-8B
# 174.0 tok/s waiting only; 172.3 with the early launch of the next kernel; 164.9 with both, 171.3 without PDL).
PDL_EARLY_MAX_BYTES = 32 << 20
_GEMV_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_PLAIN, _NORM, _SILU, _GELU_TANH = 0, 1, 2, 3  # prologue kinds (the kernel's PROLOGUE)
_ACTS = {"silu": _SILU, "gelu_tanh": _GELU_TANH}


@triton.jit(do_not_specialize=["M"])
def _gemv_kernel(
    # pointers
    x_ptr,
    residual_ptr,
    norm_w_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    residual_out_ptr,
    # sizes
    M,
    N,
    K,
    eps,
    # strides (rows; the last dim of every tensor is contiguous)
    stride_x,
    stride_r,
    stride_ro,
    stride_w,
    stride_o,
    # meta-parameters
    PROLOGUE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    LATE_REDUCE: tl.constexpr,
    PREFETCH: tl.constexpr,
    PDL: tl.constexpr,
    EARLY_TRIGGER: tl.constexpr,
):
    """out (M, N) = prologue(x) @ w.T + bias; w (N, K), bias (N,); grid (cdiv(N, BLOCK_N),).

    PROLOGUE 0: x (M, K) as is. 1: RMSNorm of x (M, K) (+ residual (M, K), the sum rounded to x's dtype and
    written to residual_out (M, K) by program 0) with norm_w (K,): the normalised row is rounded to x's dtype,
    multiplied by norm_w and rounded again. 2 / 3: x (M, 2K) = [gate | up] -> silu / gelu_tanh(gate) rounded to
    x's dtype, times up, rounded again. The dot is float32 (multiply + sum, no tl.dot: M is tiny), the bias is
    added in float32, the output rounded once. Each program streams its BLOCK_N rows of w once for all M rows.
    LATE_REDUCE keeps a (BLOCK_M, BLOCK_N, BLOCK_K) float32 accumulator and sums over K once after the loop: half
    the instructions per step (no cross-lane shuffles), twice the registers.
    PDL (launched with programmatic dependent launch, Hopper+): the kernel may start before the previous one ends and
    waits for its results before touching anything a kernel writes (with PREFETCH its first weight tile streams
    before that wait: weights are never written by a step). EARLY_TRIGGER also lets the next kernel launch at once.
    """
    if EARLY_TRIGGER:
        pdl_trigger(PDL)
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_w = tl.minimum(offs_n, N - 1)  # clamped: w loads need no row mask, the store drops the extra rows
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_x  # (BLOCK_M, 1)
    w_rows = w_ptr + rows_w[:, None].to(tl.int64) * stride_w  # (BLOCK_N, 1)

    # With PREFETCH the next weight tile's load is issued before this tile's products are summed (two tiles in flight
    # per program: Triton pipelines only loads that feed a tl.dot), and the first tile's load overlaps the norm's pass.
    if PREFETCH:
        w_next = tl.load(w_rows + offs_k[None, :], mask=(offs_k < K)[None, :], other=0.0, eviction_policy="evict_first")
    pdl_wait(PDL)  # the previous kernel's writes (x, residual, out's memory) are visible from here
    if PROLOGUE == 1:  # first pass: each row's sum of squares over all of K (x is small and L2-resident)
        r_rows = residual_ptr + offs_m[:, None].to(tl.int64) * stride_r
        ro_rows = residual_out_ptr + offs_m[:, None].to(tl.int64) * stride_ro
        store_m = tl.where(pid == 0, M, 0)  # rows of residual_out this program writes: all for program 0
        sum_sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            mask = mask_m[:, None] & (kk[None, :] < K)
            xv = tl.load(x_rows + kk[None, :], mask=mask, other=0.0)  # (BLOCK_M, BLOCK_K)
            if HAS_RESIDUAL:
                rv = tl.load(r_rows + kk[None, :], mask=mask, other=0.0)
                xv = (xv.to(tl.float32) + rv.to(tl.float32)).to(xv.dtype)
                store_mask = (offs_m[:, None] < store_m) & (kk[None, :] < K)
                tl.store(ro_rows + kk[None, :], xv.to(residual_out_ptr.dtype.element_ty), mask=store_mask)
            x32 = xv.to(tl.float32)
            sum_sq += tl.sum(x32 * x32, axis=1)
        rstd = 1.0 / tl.sqrt(sum_sq / K + eps)  # (BLOCK_M,)

    if LATE_REDUCE:
        acc3 = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < K
        mask = mask_m[:, None] & mask_k[None, :]
        if PREFETCH:
            w = w_next
            kn = kk + BLOCK_K
            w_next = tl.load(w_rows + kn[None, :], mask=(kn < K)[None, :], other=0.0, eviction_policy="evict_first")
        else:
            w = tl.load(w_rows + kk[None, :], mask=mask_k[None, :], other=0.0, eviction_policy="evict_first")
        xv = tl.load(x_rows + kk[None, :], mask=mask, other=0.0)  # (BLOCK_M, BLOCK_K); gate for the activations
        if PROLOGUE == 1:
            if HAS_RESIDUAL:
                rv = tl.load(r_rows + kk[None, :], mask=mask, other=0.0)
                xv = (xv.to(tl.float32) + rv.to(tl.float32)).to(xv.dtype)
            nw = tl.load(norm_w_ptr + kk, mask=mask_k, other=0.0).to(tl.float32)
            normed = (xv.to(tl.float32) * rstd[:, None]).to(xv.dtype).to(tl.float32)
            h = (normed * nw[None, :]).to(xv.dtype).to(tl.float32)
        elif PROLOGUE >= 2:
            up = tl.load(x_rows + K + kk[None, :], mask=mask, other=0.0).to(tl.float32)
            gate = xv.to(tl.float32)
            if PROLOGUE == 3:
                inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)  # sqrt(2/pi) (g + 0.044715 g^3)
                act = 0.5 * gate * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))  # tanh(z) = 2 sigmoid(2z) - 1
            else:
                act = gate * tl.sigmoid(gate)
            h = (act.to(xv.dtype).to(tl.float32) * up).to(xv.dtype).to(tl.float32)
        else:
            h = xv.to(tl.float32)
        if LATE_REDUCE:
            acc3 += h[:, None, :] * w.to(tl.float32)[None, :, :]
        else:
            acc += tl.sum(h[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)  # (BLOCK_M, BLOCK_N)
    if LATE_REDUCE:
        acc = tl.sum(acc3, axis=2)  # (BLOCK_M, BLOCK_N)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows_w).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_o + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & (offs_n[None, :] < N))


def _gemv(
    prologue: int,
    x2d: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    *,
    residual: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
    eps: float = 0.0,
    launch: GemvLaunch | None = None,
) -> None:
    """Launch _gemv_kernel on 2-D views (x2d rows, out (M, N)); launch overrides the tuned parameters."""
    m, n = out.shape
    k = weight.shape[1]
    kind = "plain" if prologue == _PLAIN else "norm" if prologue == _NORM else "act"
    pdl = pdl_enabled(weight.device)
    early = pdl and weight.numel() * weight.element_size() < PDL_EARLY_MAX_BYTES
    cfg = launch if launch is not None else gemv_launch(n, k, m, weight.dtype, kind)
    has_res = residual is not None
    _gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
        x2d,
        residual if has_res else x2d,
        norm_weight if norm_weight is not None else weight,
        weight,
        bias if bias is not None else weight,
        out,
        residual_out if has_res else out,
        m,
        n,
        k,
        eps,
        x2d.stride(0),
        residual.stride(0) if has_res else 0,
        residual_out.stride(0) if has_res else 0,
        weight.stride(0),
        out.stride(0),
        PROLOGUE=prologue,
        HAS_RESIDUAL=has_res,
        HAS_BIAS=bias is not None,
        BLOCK_M=triton.next_power_of_2(m),
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        LATE_REDUCE=cfg.late_reduce,
        PREFETCH=cfg.prefetch or early,  # the first tile's load overlaps the previous kernel
        PDL=pdl,
        EARLY_TRIGGER=early,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **pdl_launch(pdl),
    )


def _rows_2d(x: torch.Tensor, width: int) -> torch.Tensor:
    """x (..., width) as (rows, width) with a contiguous last dim; a view where the strides allow it."""
    x2d = x.reshape(-1, width)
    return x2d if x2d.stride(-1) == 1 else x2d.contiguous()


def _gemv_fits(
    rows: int, launch: GemvLaunch | None, x: torch.Tensor, weight: torch.Tensor, *others: torch.Tensor | None
) -> bool:
    """True when the GEMV kernel takes this call: few rows (GEMV_ROWS, or GEMV_MAX_M with an explicit launch),
    one float dtype everywhere, weight rows contiguous."""
    return (
        0 < rows <= (GEMV_ROWS if launch is None else GEMV_MAX_M)
        and x.dtype in _GEMV_DTYPES
        and weight.dtype == x.dtype
        and weight.stride(-1) == 1
        and all(t is None or t.dtype == x.dtype for t in others)
    )


def _check_linear(k: int, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    require_triton()
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"weight {tuple(weight.shape)} does not match input width {k}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias {tuple(bias.shape)} does not match weight rows {weight.shape[0]}")


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, launch: GemvLaunch | None = None
) -> torch.Tensor:
    """Triton linear_ref: the GEMV kernel for up to GEMV_MAX_M rows, F.linear (cuBLAS) beyond."""
    k = x.shape[-1]
    _check_linear(k, weight, bias)
    rows = x.numel() // k if k else 0
    if not _gemv_fits(rows, launch, x, weight, bias):
        return F.linear(x, weight, bias)
    x2d = _rows_2d(x, k)  # (M, K)
    out = torch.empty(*x.shape[:-1], weight.shape[0], dtype=x.dtype, device=x.device)
    _gemv(_PLAIN, x2d, weight, bias, out.view(rows, -1), launch=launch)
    return out


def rms_norm_linear(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    launch: GemvLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton rms_norm_linear_ref in one kernel for few rows; x and residual are never written."""
    k = x.shape[-1]
    _check_norm(x, norm_weight)
    _check_linear(k, weight, bias)
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
    rows = x.numel() // k if k else 0
    x2d = _rows_2d(x, k)  # (M, K)
    r2d = _rows_2d(residual, k) if residual is not None else None
    new_residual = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else None
    fuse = _gemv_fits(rows, launch, x, weight, bias, norm_weight, residual) and (
        launch is not None or weight.numel() * weight.element_size() <= NORM_PROLOGUE_MAX_BYTES
    )
    if not fuse:  # the norm kernel, then linear (the GEMV for few rows, else cuBLAS)
        if residual is None:
            return linear(rms_norm(x, norm_weight, eps), weight, bias), None
        # the in-place fused_add_rms_norm would write the caller's x and residual: launch into new buffers
        h = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, norm_weight.dtype), device=x.device)
        if rows:
            _launch_norm(x2d, r2d, norm_weight.contiguous(), h.view(rows, k), new_residual.view(rows, k), eps)
        return linear(h, weight, bias), new_residual
    out = torch.empty(*x.shape[:-1], weight.shape[0], dtype=x.dtype, device=x.device)
    _gemv(
        _NORM,
        x2d,
        weight,
        bias,
        out.view(rows, -1),
        residual=r2d,
        norm_weight=norm_weight.contiguous(),
        residual_out=new_residual.view(rows, k) if new_residual is not None else None,
        eps=eps,
        launch=launch,
    )
    return out, new_residual


def act_and_mul_linear(
    gate_up: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    act: str = "silu",
    *,
    launch: GemvLaunch | None = None,
) -> torch.Tensor:
    """Triton act_and_mul_linear_ref: the gated activation computed while the down projection streams."""
    if act not in _ACTS:
        raise ValueError(f"unknown activation {act!r}; known: {', '.join(_ACTS)}")
    if gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up last dim {gate_up.shape[-1]} is odd")
    inter = gate_up.shape[-1] // 2
    _check_linear(inter, weight, bias)
    rows = gate_up.numel() // (2 * inter) if inter else 0
    if not _gemv_fits(rows, launch, gate_up, weight, bias):
        h = silu_and_mul(gate_up) if act == "silu" else gelu_tanh_and_mul(gate_up)
        return F.linear(h, weight, bias)
    x2d = _rows_2d(gate_up, 2 * inter)  # (M, 2I)
    out = torch.empty(*gate_up.shape[:-1], weight.shape[0], dtype=gate_up.dtype, device=gate_up.device)
    _gemv(_ACTS[act], x2d, weight, bias, out.view(rows, -1), launch=launch)
    return out


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K), weight (N, K), bias (N,) or None -> (..., N)."""
    return F.linear(x, weight, bias)


def rms_norm_linear_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(F.linear(norm(x [+ residual]), weight, bias), x + residual or None); x, residual (..., K) unchanged."""
    if residual is None:
        return F.linear(rms_norm_ref(x, norm_weight, eps), weight, bias), None
    h, new_residual = fused_add_rms_norm_ref(x, residual, norm_weight, eps)  # non-mutating
    return F.linear(h, weight, bias), new_residual


def act_and_mul_linear_ref(
    gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, act: str = "silu"
) -> torch.Tensor:
    """gate_up (..., 2I) = [gate | up], weight (N, I) -> F.linear(act(gate) * up, weight, bias), (..., N)."""
    if act == "silu":
        h = silu_and_mul_ref(gate_up)
    elif act == "gelu_tanh":
        h = gelu_tanh_and_mul_ref(gate_up)
    else:
        raise ValueError(f"unknown activation {act!r}; known: {', '.join(_ACTS)}")
    return F.linear(h, weight, bias)
