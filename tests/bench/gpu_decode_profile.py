"""Where a decode step's time goes (not collected by pytest): batch-1 and batch-N decode tok/s with CUDA graphs and
eager, a cProfile of the host side and a torch-profiler table of the GPU side, for one random-weight model.

Run on a GPU: python tests/bench/gpu_decode_profile.py tests/fixtures/bench_configs/llama-3-8b OUT_DIR [--batch 64]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import torch

from llmctl import LLM, SamplingParams


def decode_rate(llm: LLM, batch: int, input_len: int, output_len: int) -> float:
    """Output tokens/s of the decode phase: steps after every sequence got its first token."""
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=output_len, min_tokens=output_len)
    vocab = llm.hf_config.vocab_size
    for i in range(batch):
        ids = [(i * 7919 + j * 104729) % vocab for j in range(input_len)]
        engine.add_request(engine.next_request_id(), params, prompt_token_ids=ids)
    steps = 0
    t0 = None
    while engine.has_unfinished_requests():
        outs = engine.step()
        if t0 is None and outs and all(len(o.outputs[0].token_ids) >= 1 for o in outs) and len(outs) == batch:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            steps = 0
        else:
            steps += 1
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def trace_gaps(trace_path: Path, top: int = 12) -> str:
    """Where the GPU sat idle in a torch-profiler chrome trace: its busy time, the span from the first kernel to the
    last, and the longest gaps with the kernel that ended each, how long after its launch call it started (a short
    lag: the GPU was waiting for the host) and the CPU op that launched it."""
    events = json.loads(trace_path.read_text())["traceEvents"]
    gpu = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    if not gpu:
        return "no GPU events in the trace"
    launches = {e["args"].get("correlation"): e for e in events if e.get("cat") == "cuda_runtime" and "args" in e}
    cpu_ops = sorted((e for e in events if e.get("cat") in ("cpu_op", "python_function") and "dur" in e),
                     key=lambda e: e["ts"])  # fmt: skip

    def launcher(ts: float) -> str:
        inner = [e for e in cpu_ops if e["ts"] <= ts <= e["ts"] + e["dur"]]
        return min(inner, key=lambda e: e["dur"])["name"][:60] if inner else "?"

    busy = sum(e["dur"] for e in gpu)
    span = gpu[-1]["ts"] + gpu[-1]["dur"] - gpu[0]["ts"]
    gaps = []
    for prev, nxt in zip(gpu, gpu[1:]):
        gap = nxt["ts"] - (prev["ts"] + prev["dur"])
        if gap > 0:
            gaps.append((gap, prev, nxt))
    lines = [f"GPU busy {busy / 1e3:.2f} ms over a {span / 1e3:.2f} ms span; idle {sum(g for g, _, _ in gaps) / 1e3:.2f} "
             f"ms in {len(gaps)} gaps ({sum(g for g, _, _ in gaps if g > 20) / 1e3:.2f} ms in gaps over 20 us)"]
    by_next: dict[str, list[float]] = {}
    for gap, _, nxt in gaps:
        by_next.setdefault(nxt["name"][:60], []).append(gap)
    lines.append("idle before each kind of kernel (total us, count, median us):")
    for name, spans in sorted(by_next.items(), key=lambda kv: -sum(kv[1]))[:top]:
        lines.append(f"  {sum(spans):9.1f} {len(spans):5d} {sorted(spans)[len(spans) // 2]:7.1f}  {name}")
    for gap, prev, nxt in sorted(gaps, key=lambda t: -t[0])[:top]:
        launch = launches.get(nxt.get("args", {}).get("correlation"))
        lag = f"{nxt['ts'] - launch['ts']:.0f} us after its launch by {launcher(launch['ts'])}" if launch else "?"
        lines.append(f"  {gap:8.1f} us before {nxt['name'][:50]} (after {prev['name'][:40]}): started {lag}")
    return "\n".join(lines)


def critical_path(trace_path: Path, top: int = 12) -> str:
    """Each kind of kernel's share of the GPU's critical path in a chrome trace: a kernel's end minus the end of the
    one that ended before it, summed by name. Under programmatic dependent launch kernels overlap (a kernel starts
    early and waits), so their durations overstate what each costs; these shares add up to the span."""
    events = json.loads(trace_path.read_text())["traceEvents"]
    gpu = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                 key=lambda e: e["ts"] + e["dur"])  # fmt: skip
    share: dict[str, list[float]] = {}
    for prev, nxt in zip(gpu, gpu[1:]):
        share.setdefault(nxt["name"][:60], []).append(nxt["ts"] + nxt["dur"] - prev["ts"] - prev["dur"])
    span = gpu[-1]["ts"] + gpu[-1]["dur"] - gpu[0]["ts"] - gpu[0]["dur"] if gpu else 0.0
    lines = [f"critical path {span / 1e3:.2f} ms over {len(gpu)} GPU events (total us, count, mean us):"]
    for name, parts in sorted(share.items(), key=lambda kv: -sum(kv[1]))[:top]:
        lines.append(f"  {sum(parts):9.1f} {len(parts):5d} {sum(parts) / len(parts):7.2f}  {name}")
    return "\n".join(lines)


def profile_prefill(model: str, n: int, max_model_len: int, out: Path) -> None:
    """Wall time of one n-token prefill (the time to first token) and a torch-profiler table of its kernels."""
    from torch.profiler import ProfilerActivity, profile

    llm = LLM(model, load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True, max_model_len=max_model_len)
    vocab = llm.hf_config.vocab_size
    prompt = {"prompt_token_ids": [(j * 104729) % vocab for j in range(n)]}
    params = SamplingParams(temperature=0.0, max_tokens=1)
    times = []
    for _ in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        llm.generate([prompt], params, use_tqdm=False)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        llm.generate([prompt], params, use_tqdm=False)
    trace = out / f"prefill{n}_trace.json"
    p.export_chrome_trace(str(trace))
    table = p.key_averages().table(sort_by="cuda_time_total", row_limit=30)
    wall = sorted(times[1:])[len(times[1:]) // 2]
    gaps = trace_gaps(trace)
    (out / f"prefill{n}_profile.txt").write_text(f"median wall {wall * 1e3:.2f} ms over 5 runs\n{gaps}\n{table}")
    print(f"prefill {n}: median {wall * 1e3:.2f} ms\n{gaps}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--prefill", type=int, default=0, help="only profile one prefill of this many tokens")
    ap.add_argument("--no-eager", action="store_true", help="skip the eager (enforce_eager) side")
    ap.add_argument("--min-split-keys", type=int, default=None,
                    help="override kernels/attention_decode.py MIN_SPLIT_KEYS (keys per split of a decode context)")
    args = ap.parse_args()
    if args.min_split_keys is not None:
        from llmctl.kernels import attention_decode

        attention_decode.MIN_SPLIT_KEYS = args.min_split_keys
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(), "model": args.model}
    if args.prefill:
        profile_prefill(args.model, args.prefill, args.max_model_len, out)
        return
    for eager in (False,) if args.no_eager else (False, True):
        tag = "eager" if eager else "graphs"
        t0 = time.perf_counter()
        llm = LLM(args.model, load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True, enforce_eager=eager,
                  max_model_len=args.max_model_len)
        result[f"{tag}_init_s"] = time.perf_counter() - t0
        result[f"{tag}_capture_s"] = llm.llm_engine.cuda_graph_capture_seconds
        decode_rate(llm, 1, args.input_len, 8)  # warm-up
        result[f"{tag}_batch1_tok_s"] = decode_rate(llm, 1, args.input_len, args.output_len)
        result[f"{tag}_batch{args.batch}_tok_s"] = decode_rate(llm, args.batch, args.input_len, args.output_len)
        print(tag, json.dumps(result), flush=True)
        if not eager:
            prof = cProfile.Profile()
            prof.enable()
            decode_rate(llm, 1, args.input_len, 64)
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(40)
            (out / "host_profile_batch1.txt").write_text(s.getvalue())
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                decode_rate(llm, 1, args.input_len, 32)
            (out / "torch_profile_batch1.txt").write_text(
                p.key_averages().table(sort_by="cuda_time_total", row_limit=40)
            )
            p.export_chrome_trace(str(out / "trace_batch1.json"))
            (out / "gaps_batch1.txt").write_text(trace_gaps(out / "trace_batch1.json", top=20))
            (out / "critical_path_batch1.txt").write_text(critical_path(out / "trace_batch1.json", top=20))
        del llm
        torch.cuda.empty_cache()
    (out / "decode_profile.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
