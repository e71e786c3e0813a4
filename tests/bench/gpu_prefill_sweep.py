"""Sweep the prefill attention kernel's tile (BLOCK_M, BLOCK_N, warps, stages) on Llama-3-8B heads (not collected).

On an H100 (well under 3 minutes; tiles compile in parallel first):

    python tests/bench/gpu_prefill_sweep.py --out $OUT

bf16, 32 query heads, 8 kv heads, head_dim 128, block size 16 with scattered blocks. Three cases, all causal and
all with the new k/v given (how the attention layer calls paged_attention): one fresh 2,048-token prompt, four
fresh 1,024-token prompts, and 512 new tokens on 1,536 cached ones. Each tile is timed with
triton.testing.do_bench and checked against torch SDPA, which is also timed on the same shapes (dense, causal,
k/v expanded to 32 heads so the flash backend serves it); the old path (every key through the block table, tuned
tile) is timed beside them. Prints TFLOP/s (causal FLOPs: 2 * 2 * T * T / 2 * hd * heads per fresh sequence) and
a ready-to-paste kernels/tuning.py line; writes prefill_sweep.json to --out.
Prove it on the CPU with tiny shapes (Triton's interpreter, wall-clock timing):

    python tests/bench/gpu_prefill_sweep.py --tiny --out /tmp/sweep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if "--tiny" in sys.argv:  # before torch/triton load: the interpreter must be switched on first
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

try:
    import llmctl  # noqa: F401
except ImportError:  # a bare checkout: the repository root is the package
    import tempfile

    _shim = Path(tempfile.mkdtemp()) / "llmctl"
    _shim.symlink_to(Path(__file__).resolve().parents[2], target_is_directory=True)
    sys.path.insert(0, str(_shim.parent))

from llmctl.kernels.attention import paged_attention  # noqa: E402
from llmctl.kernels.tuning import AttnLaunch, prefill_launch  # noqa: E402

# (BLOCK_M, BLOCK_N, num_warps, num_stages). Shared memory per stage is (BLOCK_N * 128 * 2 bytes) * 2 for k and v,
# plus the q tile: 128x128 tiles fit 3 stages in the H100's 227 KB, not 4 (such a tile is reported and skipped).
CONFIGS = [
    (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 4, 4), (64, 64, 8, 3), (64, 32, 4, 3), (64, 128, 4, 2),
    (128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 8, 4),
    (128, 128, 8, 2), (128, 128, 8, 3), (128, 128, 16, 2), (128, 64, 16, 3),
]  # fmt: skip
TINY_CONFIGS = [(16, 16, 4, 1), (32, 16, 4, 1)]
SHAPES = dict(num_heads=32, num_kv_heads=8, head_dim=128, block_size=16)
TINY_SHAPES = dict(num_heads=4, num_kv_heads=2, head_dim=32, block_size=16)
CASES = {  # name -> (new tokens per sequence, cached tokens per sequence)
    "fresh_1x2048": ([2048], [0]),
    "fresh_4x1024": ([1024] * 4, [0] * 4),
    "chunk_512_on_1536": ([512], [1536]),
}
TINY_CASES = {"fresh_1x40": ([40], [0]), "fresh_2x24": ([24, 24], [0, 0]), "chunk_8_on_24": ([8], [24])}


def causal_flops(q_lens: list[int], ctx_lens: list[int], head_dim: int, num_heads: int) -> float:
    """q.k and p.v FLOPs of causal attention: each new token sees the context and the new tokens up to itself."""
    pairs = sum(q * c + q * q / 2 for q, c in zip(q_lens, ctx_lens))
    return 2 * 2 * pairs * head_dim * num_heads


def make_case(q_lens, ctx_lens, shapes, dtype, device, seed=0):
    """Packed q and new k/v, a paged cache holding every sequence (blocks scattered), and the kernel's metadata."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    nh, nkv, hd, bs = shapes["num_heads"], shapes["num_kv_heads"], shapes["head_dim"], shapes["block_size"]
    seq_lens = [q + c for q, c in zip(q_lens, ctx_lens)]
    blocks_per_seq = [-(-s // bs) for s in seq_lens]
    order = torch.randperm(sum(blocks_per_seq), generator=gen).tolist()
    block_tables = torch.zeros(len(seq_lens), max(blocks_per_seq), dtype=torch.int32)
    for i, n in enumerate(blocks_per_seq):
        block_tables[i, :n] = torch.tensor(order[:n], dtype=torch.int32)
        order = order[n:]
    kv_cache = torch.randn(2, sum(blocks_per_seq), bs, nkv, hd, generator=gen).to(dtype)
    dense_k, dense_v, rows = [], [], []
    for i, seq_len in enumerate(seq_lens):
        pos = torch.arange(seq_len)
        k_seq = kv_cache[0, block_tables[i, pos // bs].long(), pos % bs]  # (seq_len, nkv, hd)
        v_seq = kv_cache[1, block_tables[i, pos // bs].long(), pos % bs]
        dense_k.append(k_seq)
        dense_v.append(v_seq)
        rows.append((k_seq[ctx_lens[i] :], v_seq[ctx_lens[i] :]))
    q = torch.randn(sum(q_lens), nh, hd, generator=gen).to(dtype)
    k = torch.cat([r[0] for r in rows])  # (T, nkv, hd): the batch's new keys, as the layer holds them
    v = torch.cat([r[1] for r in rows])
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    case = dict(q=q, k=k, v=v, kv_cache=kv_cache, query_start_loc=qsl, block_tables=block_tables,
                seq_lens=torch.tensor(seq_lens, dtype=torch.int32))
    case = {name: t.to(device) for name, t in case.items()}
    case["dense_k"] = [t.to(device) for t in dense_k]
    case["dense_v"] = [t.to(device) for t in dense_v]
    return case


def run_kernel(case, launch: AttnLaunch | None, new_kv: bool = True) -> torch.Tensor:
    hd = case["q"].shape[-1]
    return paged_attention(
        case["q"], case["kv_cache"], case["query_start_loc"], case["seq_lens"], case["block_tables"], hd**-0.5,
        k=case["k"] if new_kv else None, v=case["v"] if new_kv else None, launch=launch,
    )


def sdpa_fn(case, q_lens, ctx_lens):
    """torch SDPA on the same work, dense (B, H, T, hd): equal-length sequences batched, k/v expanded to all heads."""
    q, nh = case["q"], case["q"].shape[1]
    group = nh // case["k"].shape[1]
    qs = q.split(q_lens)
    qd = torch.stack(qs).transpose(1, 2)  # (B, nh, Tq, hd); the cases have equal lengths per batch
    kd = torch.stack(case["dense_k"]).repeat_interleave(group, dim=2).transpose(1, 2).contiguous()  # (B, nh, Tk, hd)
    vd = torch.stack(case["dense_v"]).repeat_interleave(group, dim=2).transpose(1, 2).contiguous()
    qd = qd.contiguous()
    if ctx_lens[0] == 0:
        return lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
    try:
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(qd.shape[2], kd.shape[2])
        F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask)
    except (ImportError, RuntimeError):
        tq, tk = qd.shape[2], kd.shape[2]
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
    return lambda: F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask)


def as_packed(out_dense: torch.Tensor) -> torch.Tensor:
    """(B, nh, Tq, hd) -> (B * Tq, nh, hd)."""
    return out_dense.transpose(1, 2).reshape(-1, out_dense.shape[1], out_dense.shape[3])


def time_ms(fn) -> float:
    if torch.cuda.is_available():
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[1]


def _compile_one(args) -> tuple[tuple, str | None]:
    """In a worker process: launch one tile once on the first case, so triton's disk cache holds its binary."""
    cfg, q_lens, ctx_lens, shapes = args
    try:
        case = make_case(q_lens, ctx_lens, shapes, torch.bfloat16, torch.device("cuda"))
        run_kernel(case, AttnLaunch(*cfg) if cfg is not None else None, new_kv=cfg is not None)
        torch.cuda.synchronize()
        return cfg, None
    except Exception as e:  # noqa: BLE001 - reported per tile, the sweep goes on
        return cfg, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def precompile(configs, q_lens, ctx_lens, shapes, jobs: int) -> dict:
    """Compile every tile (and the old path, cfg None) in parallel worker processes; {cfg: error} for failures."""
    if jobs <= 1 or not torch.cuda.is_available():
        return {}
    import multiprocessing as mp

    work = [(cfg, q_lens, ctx_lens, shapes) for cfg in [*configs, None]]
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            return {cfg: err for cfg, err in pool.map(_compile_one, work) if err is not None}
    except Exception as e:  # noqa: BLE001 - a broken pool only costs time: the main process compiles instead
        print(f"parallel compile failed ({type(e).__name__}: {e}); compiling in the main process", flush=True)
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for prefill_sweep.json")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU through Triton's interpreter")
    parser.add_argument("--jobs", type=int, default=min(12, os.cpu_count() or 1), help="parallel compile workers")
    args = parser.parse_args()
    tiny = args.tiny
    if not tiny and not torch.cuda.is_available():
        parser.error("needs a CUDA device (or --tiny for the CPU smoke run)")
    device = torch.device("cpu" if tiny else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    shapes, cases, configs = (TINY_SHAPES, TINY_CASES, TINY_CONFIGS) if tiny else (SHAPES, CASES, CONFIGS)
    nh, hd = shapes["num_heads"], shapes["head_dim"]
    t_start = time.perf_counter()
    first = next(iter(cases.values()))
    failed = precompile(configs, first[0], first[1], shapes, args.jobs)
    print(f"compiled {len(configs) + 1} kernels in {time.perf_counter() - t_start:.1f} s "
          f"({len(failed)} failed)", flush=True)
    tuned = prefill_launch(max(16, 1 << (hd - 1).bit_length()), dtype)
    results: dict = {}
    for name, (q_lens, ctx_lens) in cases.items():
        case = make_case(q_lens, ctx_lens, shapes, dtype, device)
        flops = causal_flops(q_lens, ctx_lens, hd, nh)
        tflops = lambda ms: flops / (ms * 1e-3) / 1e12  # noqa: E731
        sdpa = sdpa_fn(case, q_lens, ctx_lens)
        expected = as_packed(sdpa()).float()
        row = dict(q_lens=q_lens, ctx_lens=ctx_lens, gflop=flops / 1e9, configs=[])
        row["sdpa_ms"] = time_ms(sdpa)
        row["old_path_ms"] = time_ms(lambda: run_kernel(case, None, new_kv=False))
        row["old_path_tile"] = [tuned.block_m, tuned.block_n, tuned.num_warps, tuned.num_stages]
        print(f"\n{name}: {flops / 1e9:.1f} GFLOP   SDPA {row['sdpa_ms']:.3f} ms {tflops(row['sdpa_ms']):6.1f} "
              f"TFLOP/s   old path (tuned {row['old_path_tile']}) {row['old_path_ms']:.3f} ms "
              f"{tflops(row['old_path_ms']):6.1f} TFLOP/s", flush=True)
        print(f"{'BLOCK_M':>8} {'BLOCK_N':>8} {'warps':>6} {'stages':>7} {'ms':>9} {'TFLOP/s':>8} {'max err':>9}")
        for cfg in configs:
            entry = dict(config=list(cfg))
            if cfg in failed:
                entry["error"] = failed[cfg]
            else:
                try:
                    launch = AttnLaunch(*cfg)
                    err = (run_kernel(case, launch).float() - expected).abs().max().item()
                    entry.update(ms=time_ms(lambda: run_kernel(case, launch)), max_err=err)
                    entry["tflops"] = tflops(entry["ms"])
                    if err > (2e-2 if dtype != torch.float32 else 1e-4):
                        entry["error"] = f"wrong result: max abs error {err:.3g} against SDPA"
                except Exception as e:  # noqa: BLE001 - out of shared memory and the like: reported, sweep goes on
                    entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            row["configs"].append(entry)
            if "ms" in entry:
                note = f"  {entry['error']}" if "error" in entry else ""
                print(f"{cfg[0]:>8} {cfg[1]:>8} {cfg[2]:>6} {cfg[3]:>7} {entry['ms']:>9.3f} {entry['tflops']:>8.1f} "
                      f"{entry['max_err']:>9.2e}{note}", flush=True)
            else:
                print(f"{cfg[0]:>8} {cfg[1]:>8} {cfg[2]:>6} {cfg[3]:>7}   skipped: {entry['error']}", flush=True)
        results[name] = row

    # The winner: least total time over the cases (every case counts, the 2,048-token prompt is issue #4's bar).
    totals = {}
    for cfg in configs:
        entries = [next(e for e in r["configs"] if e["config"] == list(cfg)) for r in results.values()]
        if all("ms" in e and "error" not in e for e in entries):
            totals[cfg] = sum(e["ms"] for e in entries)
    summary: dict = dict(results=results, totals={str(list(c)): t for c, t in totals.items()})
    if totals:
        best = min(totals, key=totals.get)
        dtype_names = ("bfloat16", "float16") if not tiny else ("float32",)
        paste = "\n".join(f"    ({1 << (hd - 1).bit_length()}, torch.{d}): AttnLaunch{best}," for d in dtype_names)
        summary.update(best=list(best), tuning_lines=paste)
        print(f"\nbest over all cases: {best} ({totals[best]:.3f} ms in all); per case:")
        for name, r in results.items():
            ok = [e for e in r["configs"] if "ms" in e and "error" not in e]
            if ok:
                top = min(ok, key=lambda e: e["ms"])
                print(f"  {name:<20} {tuple(top['config'])} {top['ms']:.3f} ms {top['tflops']:.1f} TFLOP/s "
                      f"(SDPA {r['sdpa_ms']:.3f} ms, old path {r['old_path_ms']:.3f} ms)")
        note = "" if tiny else " (the fp16 row takes the bf16 tile: not swept)"
        print(f"\nkernels/tuning.py _PREFILL{note}:\n" + paste)
    summary.update(
        device=torch.cuda.get_device_name() if not tiny else platform.processor() or "cpu",
        torch=torch.__version__, triton=__import__("triton").__version__, dtype=str(dtype), shapes=shapes,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), seconds=round(time.perf_counter() - t_start, 1),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prefill_sweep.json").write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {args.out / 'prefill_sweep.json'} after {summary['seconds']} s")


if __name__ == "__main__":
    main()
