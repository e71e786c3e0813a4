"""Sweep the small-M GEMV kernel's launch configs against cuBLAS on Llama-3-8B and Qwen2.5-0.5B shapes (not a test).

    python tests/bench/gpu_gemv_sweep.py --out OUT_DIR [--quick] [--budget-s 200]

On CUDA in bf16, for every shape and M in {1, 2, 4, 8} (--quick: M=1, fewer configs): F.linear (cuBLAS) and the
GEMV over a grid of (BLOCK_N, BLOCK_K, warps) configs (num_stages is left at 1: with no tl.dot in the loop, Triton
3.9 emits the same code for every value; --stages 1 3 retries the best config with others). Each time is the
median of CUDA-event timings with the L2 flushed (a 256 MB memset) before every rep, so weights that fit the
50 MB L2 are read from HBM as in a real decode step. Then, at M=1 with the best config, the fused prologues
against their two-kernel versions. Writes OUT_DIR/gemv_sweep.json (every measurement), prints a table and a
ready-to-paste _GEMV dict for kernels/tuning.py. `--tiny --device cpu` runs the same code on one small shape under
Triton's interpreter (how the test suite checks this script).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

# (name, N, K, has_bias): weight (N, K) of one projection
SHAPES = [
    ("llama3-8b.qkv", 6144, 4096, False),
    ("llama3-8b.o", 4096, 4096, False),
    ("llama3-8b.gate_up", 28672, 4096, False),
    ("llama3-8b.down", 4096, 14336, False),
    ("llama3-8b.lm_head", 128256, 4096, False),
    ("qwen2.5-0.5b.qkv", 1152, 896, False),  # has a bias, timed without: a bias shape would compile every config twice
    ("qwen2.5-0.5b.o", 896, 896, False),
    ("qwen2.5-0.5b.gate_up", 9728, 896, False),
    ("qwen2.5-0.5b.down", 896, 4864, False),
    ("qwen2.5-0.5b.lm_head", 151936, 896, False),
]
TINY_SHAPES = [("tiny", 40, 96, True)]
# fused-prologue comparisons at M=1: norm + qkv / gate_up (the projections that follow an RMSNorm), act + down
NORM_SHAPES = ("llama3-8b.qkv", "llama3-8b.gate_up", "qwen2.5-0.5b.qkv", "qwen2.5-0.5b.gate_up", "tiny")
ACT_SHAPES = ("llama3-8b.down", "qwen2.5-0.5b.down", "tiny")


def _make_importable() -> None:
    """Let `import llmctl` work where the repository is not pip-installed (its root is the package)."""
    try:
        import llmctl  # noqa: F401
    except ImportError:
        import tempfile

        shim = Path(tempfile.mkdtemp()) / "llmctl"
        shim.symlink_to(Path(__file__).resolve().parents[2], target_is_directory=True)
        sys.path.insert(0, str(shim.parent))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gemv_sweep.json")
    p.add_argument("--quick", action="store_true", help="M=1 only and a smaller config grid")
    p.add_argument("--reps", type=int, default=50, help="timed reps per measurement (median)")
    p.add_argument("--budget-s", type=float, default=200.0, help="past this, later M values get the quick grid")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for an interpreter smoke run (with --tiny)")
    p.add_argument("--tiny", action="store_true", help="one small shape, two configs, M in {1, 2}")
    p.add_argument("--stages", type=int, nargs="*", default=[], help="num_stages values to retry the best config with")
    p.add_argument("--prefetch-ab", action="store_true",
                   help="only time the tuned launch of every shape (M 1, 2; fused prologues at M 1) with and without "
                        "the weight-tile prefetch")
    return p.parse_args(argv)


def config_grid(m: int, k: int, quick: bool, tiny: bool = False) -> list:
    """(BLOCK_N, BLOCK_K, warps, late_reduce) with 16-64 float32 products of the (M, BLOCK_N, BLOCK_K) tile per
    thread (16-32 accumulators for the late reduction, which keeps all of them live)."""
    from llmctl.kernels.tuning import GemvLaunch

    if tiny:
        return [GemvLaunch(32, 64, 4, 1), GemvLaunch(16, 128, 2, 1, True)]
    max_k = max(256, 1 << (k - 1).bit_length())
    out = []
    for late in (False, True):
        for warps in (4,) if quick else (4, 8):
            for block_k in (256, 512) if quick or late else (256, 512, 1024):
                per_thread = ((32,) if quick else (16, 32)) if late else (32, 64) if quick else (16, 32, 64)
                for p in per_thread:
                    block_n = p * 32 * warps // (m * block_k)
                    cfg = GemvLaunch(block_n, block_k, warps, 1, late)
                    if 1 <= block_n <= 128 and block_k <= max_k and cfg not in out:
                        out.append(cfg)
    return out


class Timer:
    """Median time (ms) of fn over reps, each after an L2 flush on CUDA; wall time under the interpreter."""

    def __init__(self, device, reps: int):
        import torch

        self.device, self.reps = device, reps
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    def __call__(self, fn) -> float:
        import torch

        fn()  # compile / warm up
        if self.flush is None:
            samples = []
            for _ in range(self.reps):
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(samples)
        for _ in range(3):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        for i in range(self.reps):
            self.flush.zero_()  # the memset keeps the GPU busy while the host enqueues the timed launch
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def _cfg_dict(cfg) -> dict:
    return dict(block_n=cfg.block_n, block_k=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                late_reduce=cfg.late_reduce, prefetch=cfg.prefetch)


def _cfg(row: dict):
    from llmctl.kernels.tuning import GemvLaunch

    return GemvLaunch(row["block_n"], row["block_k"], row["num_warps"], row["num_stages"], row["late_reduce"],
                      row.get("prefetch", True))


def prefetch_ab(timer, shapes, dtype, device) -> str:
    """The tuned launch of each shape with and without the prefetch: plain at M 1 and 2, fused prologues at M 1."""
    import torch

    from llmctl.kernels.gemv import act_and_mul_linear, linear, rms_norm_linear
    from llmctl.kernels.tuning import gemv_launch

    lines = [f"{'shape':<22} {'op':<20} {'M':>2} {'prefetch us':>11} {'plain us':>9}"]
    for name, n, k, _ in shapes:
        weight = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
        for m in (1, 2):
            x = torch.randn(m, k, device=device).to(dtype)
            cases = [("linear", lambda c: linear(x, weight, launch=c))]
            if m == 1 and name in NORM_SHAPES:
                res, nw = torch.randn(1, k, device=device).to(dtype), torch.randn(k, device=device).to(dtype)
                cases.append(("rms_norm_linear", lambda c: rms_norm_linear(x, res, nw, 1e-6, weight, launch=c)))
            if m == 1 and name in ACT_SHAPES:
                gate_up = torch.randn(1, 2 * k, device=device).to(dtype)
                cases.append(("act_and_mul_linear", lambda c: act_and_mul_linear(gate_up, weight, launch=c)))
            for op, fn in cases:
                cfg = gemv_launch(n, k, m, dtype)
                on = timer(lambda: fn(dataclasses.replace(cfg, prefetch=True)))
                off = timer(lambda: fn(dataclasses.replace(cfg, prefetch=False)))
                lines.append(f"{name:<22} {op:<20} {m:>2} {on * 1e3:>11.1f} {off * 1e3:>9.1f}")
        del weight
    return "\n".join(lines)


def sweep_shape(timer, name, n, k, has_bias, m, configs, stage_variants, dtype, device) -> list[dict]:
    """cuBLAS and every config of the GEMV for one (shape, M); the best config retried with other num_stages."""
    import torch
    import torch.nn.functional as F

    from llmctl.kernels.gemv import linear

    weight = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    bias = torch.randn(n, device=device).to(dtype) if has_bias else None
    x = torch.randn(m, k, device=device).to(dtype)
    gb = n * k * weight.element_size() / 1e9
    base = dict(shape=name, n=n, k=k, m=m, bias=has_bias)
    ref = F.linear(x, weight, bias).float()
    rows = [dict(base, impl="cublas", ms=timer(lambda: F.linear(x, weight, bias)))]
    rows[0]["gbps"] = gb / (rows[0]["ms"] / 1e3)

    def one(cfg):
        err = (linear(x, weight, bias, launch=cfg).float() - ref).abs().max().item()
        ms = timer(lambda: linear(x, weight, bias, launch=cfg))
        rows.append(dict(base, impl="gemv", **_cfg_dict(cfg), ms=ms, gbps=gb / (ms / 1e3), max_abs_err=err))

    for cfg in configs:
        one(cfg)
    best = min((r for r in rows if r["impl"] == "gemv"), key=lambda r: r["ms"])
    for stages in stage_variants:
        if stages != best["num_stages"]:
            one(dataclasses.replace(_cfg(best), num_stages=stages))
    del weight, bias, x
    return rows


def fused_rows(timer, name, n, k, cfgs, dtype, device) -> list[dict]:
    """M=1: rms_norm_linear vs fused_add_rms_norm + F.linear (or + the GEMV); act_and_mul_linear vs silu_and_mul
    + F.linear (or + the GEMV). The fused ops try each of cfgs (the prologue changes the best tile)."""
    import torch
    import torch.nn.functional as F

    from llmctl.kernels.activation import silu_and_mul
    from llmctl.kernels.gemv import act_and_mul_linear, linear, rms_norm_linear
    from llmctl.kernels.rmsnorm import fused_add_rms_norm

    weight = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    base = dict(shape=name, n=n, k=k, m=1)
    rows = []

    def add(impl, fn, cfg=None):
        rows.append(dict(base, impl=impl, **(_cfg_dict(cfg) if cfg else {}), ms=timer(fn)))

    if name in NORM_SHAPES:
        x = torch.randn(1, k, device=device).to(dtype)
        res = torch.randn(1, k, device=device).to(dtype)
        nw = torch.randn(k, device=device).to(dtype)
        xb, rb = x.clone(), res.clone()  # the unfused pair works in place, as the engine's layers do
        for cfg in cfgs:
            add("rms_norm_linear", lambda: rms_norm_linear(x, res, nw, 1e-6, weight, launch=cfg), cfg)
        add("fused_add_rms_norm+F.linear", lambda: F.linear(fused_add_rms_norm(xb, rb, nw, 1e-6)[0], weight))
        add("fused_add_rms_norm+gemv", lambda: linear(fused_add_rms_norm(xb, rb, nw, 1e-6)[0], weight, launch=cfgs[0]),
            cfgs[0])
    if name in ACT_SHAPES:
        gate_up = torch.randn(1, 2 * k, device=device).to(dtype)
        for cfg in cfgs:
            add("act_and_mul_linear", lambda: act_and_mul_linear(gate_up, weight, launch=cfg), cfg)
        add("silu_and_mul+F.linear", lambda: F.linear(silu_and_mul(gate_up), weight))
        add("silu_and_mul+gemv", lambda: linear(silu_and_mul(gate_up), weight, launch=cfgs[0]), cfgs[0])
    return rows


def report(rows: list[dict]) -> str:
    """The per-(shape, M) table and the _GEMV dict, as text."""
    lines = [f"{'shape':<22} {'M':>2} {'best (bn, bk, w, s, late)':<22} {'us':>8} {'GB/s':>7} {'cuBLAS us':>9} {'x':>6}"]
    table = []
    keys = sorted({(r["shape"], r["m"]) for r in rows if r["impl"] == "gemv"}, key=lambda t: (t[1], t[0]))
    for shape, m in keys:
        mine = [r for r in rows if r["shape"] == shape and r["m"] == m]
        best = min((r for r in mine if r["impl"] == "gemv"), key=lambda r: r["ms"])
        cublas = next(r for r in mine if r["impl"] == "cublas")
        cfg = _cfg(best)
        cfg_s = f"({cfg.block_n}, {cfg.block_k}, {cfg.num_warps}, {cfg.num_stages}{', True' if cfg.late_reduce else ''})"
        lines.append(f"{shape:<22} {m:>2} {cfg_s:<22} {best['ms'] * 1e3:>8.1f} {best['gbps']:>7.0f} "
                     f"{cublas['ms'] * 1e3:>9.1f} {cublas['ms'] / best['ms']:>5.2f}x")
        table.append(f"    ({best['n']}, {best['k']}, {m}, torch.bfloat16, \"plain\"): GemvLaunch{cfg_s},  # {shape}: "
                     f"{best['ms'] * 1e3:.1f} us, {best['gbps']:.0f} GB/s; cuBLAS {cublas['ms'] * 1e3:.1f} us")
    best_fused: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["shape"], r["impl"])
        if r["impl"] not in ("gemv", "cublas") and (key not in best_fused or r["ms"] < best_fused[key]["ms"]):
            best_fused[key] = r
    if best_fused:
        lines += ["", "fused prologues at M=1 (best of the tried configs):"]
        for r in best_fused.values():
            cfg = f"({r['block_n']}, {r['block_k']}, {r['num_warps']}, late={r['late_reduce']})" if "block_n" in r else ""
            lines.append(f"  {r['shape']:<22} {r['impl']:<30} {r['ms'] * 1e3:>8.1f} us  {cfg}")
    lines += ["", "_GEMV: dict[tuple[int, int, int, torch.dtype, str], GemvLaunch] = {", *table, "}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton's first import
    _make_importable()
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; use --tiny --device cpu for an interpreter run", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    dtype = torch.bfloat16
    shapes = TINY_SHAPES if args.tiny else SHAPES
    ms_values = [1, 2] if args.tiny else [1] if args.quick else [1, 2, 4, 8]
    timer = Timer(device, 2 if args.tiny else args.reps)
    if args.prefetch_ab:
        text = prefetch_ab(timer, shapes, dtype, device)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gemv_prefetch_ab.txt").write_text(text + "\n")
        print(text)
        return 0
    t0 = time.perf_counter()
    rows: list[dict] = []
    for m in ms_values:  # M outer: if the budget runs out, the later (less common) batch sizes get the quick grid
        for name, n, k, has_bias in shapes:
            over_budget = time.perf_counter() - t0 > args.budget_s
            configs = config_grid(m, k, args.quick or over_budget, args.tiny)
            stages = () if args.tiny or over_budget else tuple(args.stages)
            rows += sweep_shape(timer, name, n, k, has_bias, m, configs, stages, dtype, device)
            print(f"[{time.perf_counter() - t0:6.1f}s] {name} M={m}: {len(configs)} configs", flush=True)
    for name, n, k, _ in shapes:
        if name in NORM_SHAPES or name in ACT_SHAPES:
            ranked = sorted((r for r in rows if r["shape"] == name and r["m"] == 1 and r["impl"] == "gemv"),
                            key=lambda r: r["ms"])
            cfgs = list(dict.fromkeys(_cfg(r) for r in ranked))[: 1 if args.tiny else 3]
            rows += fused_rows(timer, name, n, k, cfgs, dtype, device)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
                torch=torch.__version__, triton=__import__("triton").__version__, dtype=str(dtype), reps=timer.reps,
                seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
    (args.out / "gemv_sweep.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    text = report(rows)
    (args.out / "gemv_sweep.txt").write_text(text + "\n")
    print(text)
    print(f"\n{meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
