"""Launch parameters of the Triton kernels: small tables tuned for the H100, with heuristic fallbacks."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class AttnLaunch:
    block_m: int  # query rows per program (prefill); unused by decode
    block_n: int  # keys per loop step
    num_warps: int
    num_stages: int


# (padded head_dim, dtype) -> prefill tile. Larger head dims halve the tile to stay inside shared memory.
# head_dim 128 swept on an H100 80GB HBM3 (triton 3.6, bf16, 32/8 heads, new keys read from k/v;
# `tests/bench/gpu_prefill_sweep.py`, 2026-11-27), ms for 1 x 2048 fresh | 4 x 1024 fresh | 512 new on 1536 cached:
# (128, 64, 8, 3) 0.108 | 0.139 | 0.067 (best in all), (64, 64, 4, 3) 0.112 | 0.144 | 0.063,
# (128, 32, 4, 3) 0.110 | 0.134 | 0.101, (128, 128, 8, 3) 0.121 | 0.163 | 0.062; torch SDPA 0.088 | 0.090 | 0.069.
# The fp16 row takes the bf16 tile; the other rows are unswept starting points.
_PREFILL: dict[tuple[int, torch.dtype], AttnLaunch] = {
    (64, torch.bfloat16): AttnLaunch(128, 64, 4, 3),
    (64, torch.float16): AttnLaunch(128, 64, 4, 3),
    (128, torch.bfloat16): AttnLaunch(128, 64, 8, 3),
    (128, torch.float16): AttnLaunch(128, 64, 8, 3),
    (256, torch.bfloat16): AttnLaunch(64, 32, 8, 2),
    (256, torch.float16): AttnLaunch(64, 32, 8, 2),
}

# (padded head_dim, dtype) -> decode tile (block_m unused). head_dim 128 swept on an H100 (bf16, 32/8 heads):
# block_n 64 with 4 warps was best or tied at 64x2048, 8x8192 and 1x32768 (block_n 32/128, 8 warps slower).
_DECODE: dict[tuple[int, torch.dtype], AttnLaunch] = {
    (64, torch.bfloat16): AttnLaunch(16, 64, 4, 3),
    (64, torch.float16): AttnLaunch(16, 64, 4, 3),
    (128, torch.bfloat16): AttnLaunch(16, 64, 4, 3),
    (128, torch.float16): AttnLaunch(16, 64, 4, 3),
    (256, torch.bfloat16): AttnLaunch(16, 32, 4, 2),
    (256, torch.float16): AttnLaunch(16, 32, 4, 2),
}


def prefill_launch(block_d: int, dtype: torch.dtype) -> AttnLaunch:
    """Tile for the prefill kernel; fp32 and untabled head dims use a heuristic that fits any GPU."""
    hit = _PREFILL.get((block_d, dtype))
    if hit is not None:
        return hit
    if dtype == torch.float32:  # twice the bytes per element: half the tile
        return AttnLaunch(64, 32, 4, 2) if block_d <= 128 else AttnLaunch(32, 32, 4, 1)
    return AttnLaunch(64, 64, 4, 2) if block_d <= 128 else AttnLaunch(64, 32, 8, 2)


def decode_launch(block_d: int, dtype: torch.dtype) -> AttnLaunch:
    """Tile for the split-KV decode kernel.

    float32 runs unpipelined (num_stages 1): with 2 stages Triton 3.6 built a kernel that returned NaN on an H100 once
    the rotary and KV write were folded in (32 of 48 float32 cases of head dims 80/128, any split count; 0 of 144
    with 1 stage; bf16/fp16 at 3 stages all right).
    """
    hit = _DECODE.get((block_d, dtype))
    if hit is not None:
        return hit
    if dtype == torch.float32:
        return AttnLaunch(16, 32, 4, 1)
    return AttnLaunch(16, 32 if block_d > 128 else 64, 4, 2)


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_context: int, block_n: int, device: torch.device) -> int:
    """How many programs share one sequence's context: enough to fill about two waves of SMs."""
    if device.type == "cuda":
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the interpreter: few programs run fastest
        num_sms = 1
    max_tiles = max(1, -(-max_context // block_n))
    want = -(-2 * num_sms // max(1, num_seqs * num_kv_heads))
    return max(1, min(want, max_tiles, 64))


def row_block(n: int) -> int:
    """Elements per program for row-wise kernels (norm, activation): the next power of two, at least 16."""
    return max(16, 1 << max(0, n - 1).bit_length())


def row_warps(block: int) -> int:
    """Warps for a row-wise kernel over `block` elements."""
    return 1 if block <= 256 else 4 if block <= 2048 else 8 if block <= 8192 else 16


@dataclass(frozen=True, slots=True)
class GemvLaunch:
    block_n: int  # weight rows per program
    block_k: int  # columns per loop step
    num_warps: int
    num_stages: int
    late_reduce: bool = False  # sum over K once after the loop (fewer instructions, more registers)
    prefetch: bool = True  # load the next weight tile before summing this one (two tiles in flight)


# (n, k, block_m = next power of two of m, dtype, prologue) -> GEMV launch; prologue "plain", "norm" (rms_norm_linear)
# or "act" (act_and_mul_linear), falling back to the plain entry. One-row entries: `tests/bench/gpu_gemv_graph.py` on
# an H100 80GB HBM3 (triton 3.6, 2026-11-27): calls back to back in a CUDA graph, weights cycled past the L2; us per
# call beside cuBLAS (F.linear) in the same run. Llama-3-8B's qkv, o and gate_up entries were then re-chosen end to
# end (`llmctl bench` batch-1 decode, the model's other kernels around them under PDL; BENCHMARKS.md): tiles that
# lost in isolation won there. Two-row entries: `tests/bench/gpu_gemv_sweep.py` (L2 flushed per call, so its times
# include a launch each). At 4 and 8 rows cuBLAS won most shapes (kernels/gemv.py GEMV_ROWS).
# Untabled shapes use gemv_heuristic.
_B = torch.bfloat16
_GEMV: dict[tuple[int, int, int, torch.dtype, str], GemvLaunch] = {
    # Llama-3-8B
    # qkv (16, 1024, 8) 20.5 us alone, cuBLAS 20.6; in the model (8, 1024, 4) 180.5 vs 179.8 tok/s
    (6144, 4096, 1, _B, "plain"): GemvLaunch(8, 1024, 4, 1, prefetch=False),
    (6144, 4096, 1, _B, "norm"): GemvLaunch(16, 1024, 8, 1, prefetch=False),  # 22.8 us; norm kernel + cuBLAS 23.4
    # o (4, 512, 4) 15.3 us alone, cuBLAS 15.7; in the model two warps over (2, 1024) 178.0 vs 175.1 tok/s
    (4096, 4096, 1, _B, "plain"): GemvLaunch(2, 1024, 2, 1),
    # gate_up (8, 512, 4) 78.9 us alone, cuBLAS 93.7; in the model (4, 1024, 4) 176.7 vs 175.1 tok/s
    (28672, 4096, 1, _B, "plain"): GemvLaunch(4, 1024, 4, 1, True, prefetch=False),
    (4096, 14336, 1, _B, "plain"): GemvLaunch(4, 1024, 4, 1, prefetch=False),  # down 41.8 us, cuBLAS 44.0
    (4096, 14336, 1, _B, "act"): GemvLaunch(4, 1024, 4, 1),  # 42.6 us; act kernel + cuBLAS 45.9
    (128256, 4096, 1, _B, "plain"): GemvLaunch(2, 1024, 4, 1),  # lm_head 335.0 us, cuBLAS 428.9
    # Qwen2.5-0.5B
    (1152, 896, 1, _B, "plain"): GemvLaunch(2, 512, 4, 1, True),  # qkv 3.0 us, cuBLAS 4.3
    (1152, 896, 1, _B, "norm"): GemvLaunch(2, 1024, 4, 1, prefetch=False),  # 3.4 us; norm kernel + cuBLAS 6.0
    (896, 896, 1, _B, "plain"): GemvLaunch(2, 1024, 4, 1, prefetch=False),  # o 2.7 us, cuBLAS 4.2
    (9728, 896, 1, _B, "plain"): GemvLaunch(4, 1024, 4, 1, prefetch=False),  # gate_up 8.3 us, cuBLAS 8.6
    (9728, 896, 1, _B, "norm"): GemvLaunch(4, 1024, 4, 1, prefetch=False),  # 9.3 us; norm kernel + cuBLAS 10.3
    (896, 4864, 1, _B, "plain"): GemvLaunch(1, 1024, 4, 1),  # down 5.6 us, cuBLAS 7.6
    (896, 4864, 1, _B, "act"): GemvLaunch(4, 1024, 4, 1),  # 7.9 us; act kernel + cuBLAS 9.1
    (151936, 896, 1, _B, "plain"): GemvLaunch(16, 1024, 8, 1, prefetch=False),  # lm_head 91.9 us, cuBLAS 109.5
    # two rows (us with a launch each; cuBLAS likewise)
    (6144, 4096, 2, _B, "plain"): GemvLaunch(4, 512, 4, 1, True, prefetch=False),  # 25.8 us, cuBLAS 29.7
    (4096, 4096, 2, _B, "plain"): GemvLaunch(4, 1024, 4, 1, prefetch=False),  # 20.0 us, cuBLAS 23.2
    (28672, 4096, 2, _B, "plain"): GemvLaunch(4, 512, 4, 1, True, prefetch=False),  # 91.0 us, cuBLAS 95.7
    (4096, 14336, 2, _B, "plain"): GemvLaunch(4, 1024, 4, 1, prefetch=False),  # 50.3 us, cuBLAS 56.3
    (128256, 4096, 2, _B, "plain"): GemvLaunch(4, 1024, 4, 1, prefetch=False),  # 363.3 us, cuBLAS 387.4
    (1152, 896, 2, _B, "plain"): GemvLaunch(2, 1024, 4, 1, prefetch=False),  # 6.4 us, cuBLAS 8.4
    (896, 896, 2, _B, "plain"): GemvLaunch(2, 1024, 4, 1, prefetch=False),  # 6.0 us, cuBLAS 7.6
    (9728, 896, 2, _B, "plain"): GemvLaunch(4, 1024, 4, 1, prefetch=False),  # 12.9 us, cuBLAS 14.4
    (896, 4864, 2, _B, "plain"): GemvLaunch(1, 1024, 4, 1, prefetch=False),  # 11.3 us, cuBLAS 11.8
    (151936, 896, 2, _B, "plain"): GemvLaunch(4, 1024, 4, 1, prefetch=False),  # 100.6 us, cuBLAS 109.5
}

_GEMV_SMS = 132  # H100 SXM; enough programs to fill it a couple of times over also fills smaller GPUs


def gemv_heuristic(n: int, k: int, m: int, dtype: torch.dtype) -> GemvLaunch:
    """A launch that streams the weight with 16-byte loads and keeps the (M, BLOCK_N, BLOCK_K) product in registers.

    BLOCK_K covers two 16-byte vectors per lane of a warp; BLOCK_N is what ~64 float32 products per thread allow
    (32 with one or two rows, which keep a late-reduced accumulator of that size), halved until there are at
    least two waves of programs.
    """
    block_m = 1 << max(0, m - 1).bit_length()
    itemsize = dtype.itemsize
    num_warps = 4
    block_k = min(max(16, 1 << max(0, k - 1).bit_length()), 2 * 32 * (16 // itemsize))
    late = block_m <= 2
    block_n = max(1, min(64, (32 if late else 64) * 32 * num_warps // (block_m * block_k)))
    while block_n > 1 and -(-n // block_n) < 2 * _GEMV_SMS:
        block_n //= 2
    return GemvLaunch(block_n, block_k, num_warps, 1, late)  # no tl.dot in the loop: Triton 3.9 ignores num_stages


def gemv_launch(n: int, k: int, m: int, dtype: torch.dtype, prologue: str = "plain") -> GemvLaunch:
    """Launch parameters of the small-M GEMV kernel (kernels/gemv.py) for weight (n, k), m input rows and the kernel's
    prologue ("plain", "norm", "act")."""
    block_m = 1 << max(0, m - 1).bit_length()
    hit = _GEMV.get((n, k, block_m, dtype, prologue)) or _GEMV.get((n, k, block_m, dtype, "plain"))
    return hit if hit is not None else gemv_heuristic(n, k, m, dtype)
