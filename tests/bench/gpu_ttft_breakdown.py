"""Where the time to first token goes (not collected by pytest): host time before the forward, the forward's host
launch time and GPU time (CUDA events), and what follows it, for one-token requests on a random-weight model.

Run on a GPU: python tests/bench/gpu_ttft_breakdown.py tests/fixtures/bench_configs/llama-3-8b [--len 2048]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from llmctl import LLM, SamplingParams


def layer_timeline(engine, model, prompt, params) -> list[str]:
    """One more request with a CUDA event and a host clock at the start of every decoder layer: when the host
    reaches a layer later than the GPU does, the GPU waited for the host there."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    marks = []

    def pre_hook(module, args):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        marks.append((time.perf_counter(), event))

    handles = [layer.register_forward_pre_hook(pre_hook) for layer in layers]
    try:
        torch.cuda.synchronize()
        engine.add_request(engine.next_request_id(), params, prompt_token_ids=prompt)
        while engine.has_unfinished_requests():
            engine.step()
        torch.cuda.synchronize()
    finally:
        for h in handles:
            h.remove()
    host0, event0 = marks[0]
    lines = []
    for i, (host, event) in enumerate(marks):
        gpu_ms = event0.elapsed_time(event)
        host_ms = (host - host0) * 1e3
        lines.append(f"layer {i:2d}: host {host_ms:7.2f} ms, gpu {gpu_ms:7.2f} ms, host ahead by {gpu_ms - host_ms:6.2f}")
    return lines


def host_hotspots(engine, prompt, params, top: int = 25) -> list[str]:
    """One more request under a CPU-only torch profiler (no CUPTI, so no first-launch artefacts): the ops with the
    most self time on the host, with when each started relative to the first op."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.add_request(engine.next_request_id(), params, prompt_token_ids=prompt)
        while engine.has_unfinished_requests():
            engine.step()
        torch.cuda.synchronize()
    events = list(prof.events())
    t0 = min(e.time_range.start for e in events)
    hot = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return [f"{e.self_cpu_time_total:8.1f} us self at +{(e.time_range.start - t0) / 1e3:7.2f} ms  {e.name[:70]}"
            for e in hot]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--max-model-len", type=int, default=4096)
    args = ap.parse_args()
    llm = LLM(args.model, load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True,
              max_model_len=args.max_model_len)  # fmt: skip
    engine = llm.llm_engine
    model = engine.runner.model
    forward = model.forward
    marks: dict[str, object] = {}

    def timed_forward(*a, **k):
        marks["in"] = time.perf_counter()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = forward(*a, **k)
        end.record()
        marks["out"] = time.perf_counter()
        marks["events"] = (start, end)
        return out

    model.forward = timed_forward
    vocab = llm.hf_config.vocab_size
    prompt = [(j * 104729) % vocab for j in range(args.len)]
    params = SamplingParams(temperature=0.0, max_tokens=1)
    rows = []
    for i in range(args.repeats + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.add_request(engine.next_request_id(), params, prompt_token_ids=prompt)
        t1 = time.perf_counter()
        while engine.has_unfinished_requests():
            engine.step()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        start, end = marks["events"]
        row = {
            "total_ms": (t2 - t0) * 1e3,
            "add_request_ms": (t1 - t0) * 1e3,
            "to_forward_ms": (marks["in"] - t1) * 1e3,
            "forward_launch_ms": (marks["out"] - marks["in"]) * 1e3,
            "forward_gpu_ms": start.elapsed_time(end),
            "after_launch_ms": (t2 - marks["out"]) * 1e3,
        }
        if i >= 2:
            rows.append(row)
    summary = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    summary["per_layer"] = layer_timeline(engine, model, prompt, params)
    summary["host_hotspots"] = host_hotspots(engine, prompt, params)
    summary["device"] = torch.cuda.get_device_name()
    summary["prompt_len"] = args.len
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
