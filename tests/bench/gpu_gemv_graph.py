"""GEMV launch configs timed as a decode step runs them (not collected by pytest): back to back inside one CUDA
graph, each call on its own copy of the weight so that no call finds its weight in L2.

    python tests/bench/gpu_gemv_graph.py --out OUT_DIR

For Llama-3-8B and Qwen2.5-0.5B projections (bf16, one input row): the plain GEMV, the norm-prologue GEMV
(rms_norm_linear) for the projections after an RMSNorm and the activation-prologue GEMV (act_and_mul_linear)
for the down projections, each over a few launch configs around the tuned one, beside the unfused pair (norm or
activation kernel, then cuBLAS or the GEMV). Per-call microseconds are the graph's time over its calls; the
best config per (shape, op) is printed as kernels/tuning.py lines. Writes OUT_DIR/gemv_graph.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_gemv_sweep import ACT_SHAPES, NORM_SHAPES, SHAPES, _make_importable  # noqa: E402

COPIES_BYTES = 256 << 20  # at least this many weight bytes cycled through (the L2 holds 50 MB)


def graph_us(calls, reps: int = 10) -> float:
    """Microseconds per call of `calls` replayed back to back in one CUDA graph."""
    for fn in calls[:2]:
        fn()  # compile, pick cuBLAS kernels
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * len(calls))


def variants(cfg):
    """The tuned config, without its prefetch, and with half / double the rows per program."""
    out = [cfg, dataclasses.replace(cfg, prefetch=not cfg.prefetch)]
    for block_n in (cfg.block_n // 2, cfg.block_n * 2):
        if 1 <= block_n <= 64:
            out.append(dataclasses.replace(cfg, block_n=block_n))
    return out


def wide_grid(prefetch_too: bool = True):
    """Launches over rows per program, tile width, warps (2, 4) and prefetch (the plain reduction)."""
    from llmctl.kernels.tuning import GemvLaunch

    return [GemvLaunch(bn, bk, w, 1, prefetch=pf) for bn in (1, 2, 4, 8) for bk in (512, 1024) for w in (2, 4)
            for pf in ((True, False) if prefetch_too else (True,)) if bn * bk <= 64 * 32 * w]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--wide", nargs="*", default=[], metavar="SHAPE",
                    help="only these shapes (e.g. qwen2.5-0.5b.gate_up), each op over a wide grid of launches")
    args = ap.parse_args()
    _make_importable()
    from llmctl.kernels.activation import silu_and_mul
    from llmctl.kernels.gemv import act_and_mul_linear, linear, rms_norm_linear
    from llmctl.kernels.rmsnorm import fused_add_rms_norm
    from llmctl.kernels.tuning import gemv_launch

    torch.manual_seed(0)
    dtype, dev = torch.bfloat16, torch.device("cuda")
    rows = []
    shapes = [sh for sh in SHAPES if sh[0] in args.wide] if args.wide else SHAPES
    for name, n, k, _ in shapes:
        nbytes = n * k * 2
        copies = max(2, min(160, -(-COPIES_BYTES // nbytes)))
        weights = [(torch.randn(n, k, device=dev) / k**0.5).to(dtype) for _ in range(copies)]
        x = torch.randn(1, k, device=dev).to(dtype)
        res, nw = torch.randn(1, k, device=dev).to(dtype), torch.randn(k, device=dev).to(dtype)
        gate_up = torch.randn(1, 2 * k, device=dev).to(dtype)

        def add(op, impl, fn_of_w, cfg=None):
            us = graph_us([lambda w=w: fn_of_w(w) for w in weights])
            row = dict(shape=name, n=n, k=k, op=op, impl=impl, us=us, gbps=nbytes / us / 1e3)
            if cfg is not None:
                row.update(dataclasses.asdict(cfg))
            rows.append(row)
            print(f"{name:<22} {op:<7} {impl:<28} {us:7.2f} us {row['gbps']:6.0f} GB/s {cfg or ''}", flush=True)

        base = gemv_launch(n, k, 1, dtype)
        add("plain", "cublas", lambda w: F.linear(x, w))
        if args.wide:
            for cfg in wide_grid():  # the op the layer runs: fused where a prologue applies
                if name not in NORM_SHAPES and name not in ACT_SHAPES:
                    add("plain", "gemv", lambda w, c=cfg: linear(x, w, launch=c), cfg)
                if name in NORM_SHAPES:
                    add("norm", "fused", lambda w, c=cfg: rms_norm_linear(x, res, nw, 1e-6, w, launch=c), cfg)
                if name in ACT_SHAPES:
                    add("act", "fused", lambda w, c=cfg: act_and_mul_linear(gate_up, w, launch=c), cfg)
            del weights
            continue
        for cfg in variants(base):
            add("plain", "gemv", lambda w, c=cfg: linear(x, w, launch=c), cfg)
        if name in NORM_SHAPES:
            add("norm", "norm kernel + cublas", lambda w: F.linear(fused_add_rms_norm(x, res, nw, 1e-6)[0], w))
            add("norm", "norm kernel + gemv", lambda w: linear(fused_add_rms_norm(x, res, nw, 1e-6)[0], w, launch=base),
                base)
            for cfg in variants(base):
                add("norm", "fused", lambda w, c=cfg: rms_norm_linear(x, res, nw, 1e-6, w, launch=c), cfg)
        if name in ACT_SHAPES:
            add("act", "act kernel + cublas", lambda w: F.linear(silu_and_mul(gate_up), w))
            add("act", "act kernel + gemv", lambda w: linear(silu_and_mul(gate_up), w, launch=base), base)
            for cfg in variants(base):
                add("act", "fused", lambda w, c=cfg: act_and_mul_linear(gate_up, w, launch=c), cfg)
        del weights
        torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gemv_graph.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=1))
    print("\nbest per (shape, op):")
    for key in sorted({(r["shape"], r["op"]) for r in rows}):
        mine = [r for r in rows if (r["shape"], r["op"]) == key]
        best = min(mine, key=lambda r: r["us"])
        print(f"  {key[0]:<22} {key[1]:<6} {best['impl']:<22} {best['us']:7.2f} us  "
              f"{ {f: best[f] for f in ('block_n', 'block_k', 'num_warps', 'late_reduce', 'prefetch') if f in best} }")
    return 0


if __name__ == "__main__":
    sys.exit(main())
