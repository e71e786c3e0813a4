"""On a GPU, by hand (not collected by pytest): long single prompts (issue 13), chunked prefill checked against one
chunk and transformers, and time to first token / batch-1 decode beside transformers.

    python3 tests/engine/gpu_long_context.py --out "$OUT"          # CUDA: Llama-3.1-8B shape, bf16, random weights
    python3 tests/engine/gpu_long_context.py --tiny --out DIR      # the same parts on a tiny config (a CPU will do)

Parts, each in its own process (an illegal memory access poisons the CUDA context: one part must not take the
others' results with it), within --budget-s seconds in all; a part that fails records its error:
  long         max_model_len 131,072: prompts of 20,000 / 32,000 / 131,000 tokens (a few greedy tokens each, finite
               logprobs), llmctl's time to first token at 32,768 and 131,000 (the median of warm runs: the first
               prompt compiles the kernels) and batch-1 decode at 32k context
  chunked      a 2-layer model of the same layout (vocab 128,256) in float32: a 20,000-token prompt in chunks of 2,048,
               8,192 (the CUDA default: three chunks, the size that crashed) and 32,768 (one chunk); the greedy tokens'
               top-5 logprobs and every prompt position's logprob against each other and against transformers
  transformers transformers (sdpa, bf16, logits_to_keep=1, no cache): one forward of 32,768 and 131,000 tokens
  repro        (only when asked for) the issue's exact engine (max_model_len 32,768, gpu_memory_utilization 0.5,
               default chunking, CUDA graphs of up to 512 sequences) on single prompts of 20,000 and 32,000 tokens
Writes OUT/results.json, OUT/summary.txt (also printed) and OUT/<part>.json / .log per part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

PARTS = ("repro", "long", "chunked", "transformers")
DEFAULT_PARTS = ("long", "chunked", "transformers")  # repro: the lead's H100 run already took it (main, e91834a)
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "hidden_act": "silu", "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "vocab_size": 128256, "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
}
TINY = {
    **LLAMA31_8B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 2048, "vocab_size": 1000, "bos_token_id": 1,
    "eos_token_id": 2,
    "rope_scaling": {**LLAMA31_8B["rope_scaling"], "original_max_position_embeddings": 256},
}
FULL_SIZES = dict(
    config=LLAMA31_8B, budget=None, repro_len=32768, repro_prompts=[20000, 32000], long_len=131072,
    long_prompts=[20000, 32000, 131000], ttft=[[32768, 2], [131000, 0]], decode_ctx=32768, decode_tokens=128,
    chunk_len=32768, chunk_prompt=20000, chunk_budgets=[2048, 8192, 32768], warmup=1024,
)
TINY_SIZES = dict(
    config=TINY, budget=64, repro_len=512, repro_prompts=[200, 300], long_len=2048, long_prompts=[200, 300, 2000],
    ttft=[[320, 2], [2000, 0]], decode_ctx=320, decode_tokens=16, chunk_len=1024, chunk_prompt=500,
    chunk_budgets=[16, 64, 1024], warmup=64,
)


# -- helpers (run inside a part's process) ------------------------------------------------------------------------


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _config_dir(config: dict) -> str:
    folder = tempfile.mkdtemp(prefix="gpu_long_context_")
    Path(folder, "config.json").write_text(json.dumps(config))
    return folder


def _prompt(n: int, vocab: int, seed: int) -> list[int]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n,), generator=gen).tolist()


def _llm(config: dict, max_model_len: int, dtype: str, **options):
    from llmctl import LLM

    if _device().type != "cuda":
        options.pop("gpu_memory_utilization", None)
    options = {k: v for k, v in options.items() if v is not None}
    return LLM(_config_dir(config), load_format="dummy", skip_tokenizer_init=True, dtype=dtype, device=str(_device()),
               max_model_len=max_model_len, **options)  # fmt: skip


def _generate(llm, prompt: list[int], max_tokens: int, logprobs: int | None = 1, **params) -> dict:
    """One greedy request: tokens, whether every sampled logprob is finite (without logprobs: None), wall time, TTFT
    and decode rate. Logprobs cost a read-back per step: timed decode runs go without."""
    from llmctl import SamplingParams

    sp = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=max_tokens, logprobs=logprobs, **params)
    _sync()
    t0 = time.perf_counter()
    out = llm.generate({"prompt_token_ids": prompt}, sp)[0]
    _sync()
    wall = time.perf_counter() - t0
    if out.error is not None:
        raise RuntimeError(f"request rejected: {out.error}")
    c, m = out.outputs[0], out.metrics
    print(f"{time.strftime('%H:%M:%S')} prompt {len(prompt)}: {len(c.token_ids)} tokens in {wall:.2f} s", flush=True)
    finite = None if logprobs is None else all(math.isfinite(d[t].logprob) for t, d in zip(c.token_ids, c.logprobs))
    decode = None
    if len(c.token_ids) > 1 and m.last_token_time > m.first_token_time:
        decode = (len(c.token_ids) - 1) / (m.last_token_time - m.first_token_time)
    return {"prompt_len": len(prompt), "tokens": c.token_ids, "finite": finite, "wall_s": round(wall, 3),
            "ttft_s": round(m.time_to_first_token, 3), "decode_tok_s": decode and round(decode, 1), "out": out}


def _hf_model(config: dict, dtype):
    """transformers' Llama with sdpa attention, randomly initialised on the device in dtype."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    with torch.device(_device()):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config), dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _public(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "out"}


def _memory(result: dict, llm=None) -> None:
    import torch

    if llm is not None:
        bm = llm.llm_engine.block_manager
        result["kv_cache_tokens"] = bm.num_blocks * bm.block_size
        result["max_num_batched_tokens"] = llm.llm_engine.config.max_num_batched_tokens
    if torch.cuda.is_available():
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)


# -- parts --------------------------------------------------------------------------------------------------------


def part_repro(s: dict, result: dict, save) -> None:
    """The issue's engine and prompts: must not crash, a few finite tokens each."""
    dtype = "bfloat16" if _device().type == "cuda" else "float32"
    llm = _llm(s["config"], s["repro_len"], dtype, gpu_memory_utilization=0.5, max_num_batched_tokens=s["budget"])
    _memory(result, llm)
    result["runs"] = []
    for i, n in enumerate(s["repro_prompts"]):
        run = _generate(llm, _prompt(n, s["config"]["vocab_size"], i), 4)
        result["runs"].append(_public(run))
        save()
    result["ok"] = all(r["finite"] and len(r["tokens"]) == 4 for r in result["runs"])
    _memory(result)


def part_long(s: dict, result: dict, save) -> None:
    """Prompts up to max_model_len 131,072, then llmctl's TTFT and batch-1 decode at 32k context."""
    dtype = "bfloat16" if _device().type == "cuda" else "float32"
    llm = _llm(s["config"], s["long_len"], dtype, gpu_memory_utilization=0.9, max_num_seqs=1,
               max_num_batched_tokens=s["budget"])  # fmt: skip
    _memory(result, llm)
    vocab = s["config"]["vocab_size"]
    result["runs"] = []
    samples: dict[int, list[float]] = {}  # prompt length -> TTFT (s) of runs on warm kernels
    for i, n in enumerate(s["long_prompts"]):
        run = _generate(llm, _prompt(n, vocab, 10 + i), 4)
        result["runs"].append(_public(run))
        if i:  # the first run compiled the kernels
            samples.setdefault(n, []).append(run["ttft_s"])
        save()
    result["ok"] = all(r["finite"] and len(r["tokens"]) == 4 for r in result["runs"])
    result["ttft_ms"] = {}
    for n, extra in s["ttft"]:
        extra = extra if samples.get(n) else max(1, extra)
        times = samples.get(n, []) + [_generate(llm, _prompt(n, vocab, 100 + k), 1, logprobs=None)["ttft_s"]
                                      for k in range(extra)]  # fmt: skip
        result["ttft_ms"][str(n)] = round(1e3 * sorted(times)[len(times) // 2], 1)
        save()
    run = _generate(llm, _prompt(s["decode_ctx"], vocab, 200), s["decode_tokens"], logprobs=None)
    result["decode"] = {"context": s["decode_ctx"], "new_tokens": len(run["tokens"]),
                        "ttft_s": run["ttft_s"], "decode_tok_s": run["decode_tok_s"]}  # fmt: skip
    _memory(result)


def part_chunked(s: dict, result: dict, save) -> None:
    """A long prompt in float32 at several chunk sizes, against each other and transformers: the top-5 logprobs of
    each greedy token, from a request that reads nothing back before its last chunk (the steps queue ahead of the
    GPU: the path that crashed), and every prompt position's logprob, from a second request (prompt logprobs read
    back every chunk)."""
    import torch

    from llmctl.core.engine.loader import load_weights

    config = {**s["config"], "num_hidden_layers": 2, "torch_dtype": "float32"}
    hf = _hf_model(config, torch.float32)
    state = hf.state_dict()
    prompt = _prompt(s["chunk_prompt"], config["vocab_size"], 300)
    result["prompt_len"] = len(prompt)
    kv_bytes = config["num_hidden_layers"] * 2 * config["num_key_value_heads"] * config["head_dim"] * 4
    runs = {}
    for budget in s["chunk_budgets"]:
        llm = _llm(config, s["chunk_len"], "float32", max_num_seqs=1, max_num_batched_tokens=budget,
                   kv_cache_memory=kv_bytes * s["chunk_len"])  # one sequence of chunk_len tokens
        load_weights(llm.llm_engine.runner.model, state.items(), llm.dtype)
        run = _generate(llm, prompt, 4, logprobs=5)
        sampled = [{t: lp.logprob for t, lp in d.items()} for d in run.pop("out").outputs[0].logprobs]
        every = _generate(llm, prompt, 1, logprobs=None, prompt_logprobs=0)["out"]
        lps = [d[prompt[i]].logprob for i, d in enumerate(every.prompt_logprobs) if d is not None]
        runs[budget] = (sampled, lps)
        result[f"chunks_of_{budget}"] = {**run, "chunks": -(-len(prompt) // budget)}
        del llm, every
        _free()
        save()

    # transformers over the prompt and the first run's tokens, fed in slices through its own KV cache (one pass of
    # 20k float32 tokens takes the math attention path: a 20k x 20k score matrix per head); every position's
    # log-softmax
    from transformers import DynamicCache

    tokens = result[f"chunks_of_{s['chunk_budgets'][0]}"]["tokens"]
    ids = torch.tensor(prompt + tokens[:-1], device=_device())
    ref_prompt, ref_sampled = [], []
    cache = DynamicCache()
    with torch.inference_mode():
        for lo in range(0, len(ids), 2048):
            hidden = hf.model(input_ids=ids[None, lo : lo + 2048], past_key_values=cache,
                              use_cache=True).last_hidden_state[0]  # (<= 2048, H)
            lp = torch.log_softmax(hf.lm_head(hidden).float(), dim=-1)  # row i predicts token lo + i + 1
            nxt = ids[lo + 1 : lo + 1 + lp.shape[0]]
            ref_prompt += lp[: len(nxt)].gather(1, nxt[:, None])[:, 0].tolist()
            first = max(0, len(prompt) - 1 - lo)  # rows from position L - 1 on predict the generated tokens
            ref_sampled += list(lp[first:].cpu())
    del cache
    ref_prompt = ref_prompt[: len(prompt) - 1]
    one = runs[s["chunk_budgets"][-1]]
    for budget, (sampled, lps) in runs.items():
        r = result[f"chunks_of_{budget}"]
        r["prompt_logprob_max_diff_vs_transformers"] = max(abs(a - b) for a, b in zip(lps, ref_prompt))
        r["prompt_logprob_max_diff_vs_one_chunk"] = max(abs(a - b) for a, b in zip(lps, one[1]))
        r["sampled_logprob_max_diff_vs_transformers"] = max(
            abs(lp - float(ref[t])) for d, ref in zip(sampled, ref_sampled) for t, lp in d.items())
        r["tokens_are_transformers_greedy"] = r["tokens"] == [int(ref.argmax()) for ref in ref_sampled]
    # float32: only summation orders differ (about 1e-5); a wrong key, block or position moves logprobs by 1e-1 or more
    result["ok"] = all(
        r["tokens"] == tokens and r["tokens_are_transformers_greedy"] and r["finite"]
        and max(r["prompt_logprob_max_diff_vs_transformers"], r["prompt_logprob_max_diff_vs_one_chunk"],
                r["sampled_logprob_max_diff_vs_transformers"]) < 2e-3
        for r in (result[f"chunks_of_{b}"] for b in s["chunk_budgets"]))  # fmt: skip
    _memory(result)


def part_transformers(s: dict, result: dict, save) -> None:
    """transformers' time to first token: one forward of the prompt (sdpa, no cache, last position's logits only)."""
    import torch

    device = _device()
    model = _hf_model(s["config"], torch.bfloat16 if device.type == "cuda" else torch.float32)
    vocab = s["config"]["vocab_size"]

    @torch.inference_mode()
    def first_token(prompt: list[int]) -> float:
        ids = torch.tensor([prompt], device=device)
        _sync()
        t0 = time.perf_counter()
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits  # (1, 1, V)
        int(logits[0, -1].argmax())
        _sync()
        return time.perf_counter() - t0

    first_token(_prompt(s["warmup"], vocab, 0))
    result["ttft_ms"] = {}
    for n, repeats in s["ttft"]:  # as many runs as llmctl's side has warm samples (at least one)
        walls = [first_token(_prompt(n, vocab, 100 + k)) for k in range(max(1, repeats))]
        result["ttft_ms"][str(n)] = round(1e3 * sorted(walls)[len(walls) // 2], 1)
        save()
    result["ok"] = True
    _memory(result)


# -- driver -------------------------------------------------------------------------------------------------------


def run_part(name: str, sizes: dict, out: Path) -> int:
    """Run one part in this process; its result (written after every step) goes to OUT/<name>.json."""
    import torch

    result: dict = {"part": name, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__}  # fmt: skip
    path = out / f"{name}.json"

    def save() -> None:
        path.write_text(json.dumps(result, indent=1))

    t0 = time.perf_counter()
    try:
        globals()[f"part_{name}"](sizes, result, save)
    except BaseException as exc:  # recorded, then the process still fails
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-3000:]
    result["seconds"] = round(time.perf_counter() - t0, 1)
    save()
    return 0 if result.get("ok") else 1


def compare_ttft(results: dict) -> dict:
    """{prompt length: {llmctl_ms, transformers_ms, speedup}} where both sides measured it."""
    ours = results.get("long", {}).get("ttft_ms", {})
    theirs = results.get("transformers", {}).get("ttft_ms", {})
    return {n: {"llmctl_ms": ours[n], "transformers_ms": theirs[n], "speedup": round(theirs[n] / ours[n], 2)}
            for n in ours if n in theirs and ours[n] > 0}


def summarize(results: dict) -> str:
    lines = []
    for name, r in results.items():
        head = f"{name}: {'ok' if r.get('ok') else 'FAILED'} in {r.get('seconds', '?')} s on {r.get('device', '?')}"
        lines.append(head + (f" -- {r['error']}" if r.get("error") else ""))
        for run in r.get("runs", []):
            lines.append(f"  prompt {run['prompt_len']:>7}: tokens {run['tokens']} finite={run['finite']} "
                         f"ttft {run['ttft_s']} s")  # fmt: skip
        for key, value in r.items():
            if key.startswith("chunks_of_"):
                p_hf, p_one, s_hf = (value.get(f"{k}_logprob_max_diff_vs_{v}", float("nan"))
                                     for k, v in (("prompt", "transformers"), ("prompt", "one_chunk"),
                                                  ("sampled", "transformers")))  # fmt: skip
                lines.append(f"  {key} ({value['chunks']} chunks): tokens {value['tokens']}; max |dlogprob|: prompt "
                             f"vs transformers {p_hf:.2e}, vs one chunk {p_one:.2e}; sampled top-5 vs transformers "
                             f"{s_hf:.2e}")  # fmt: skip
        if "ttft_ms" in r:
            lines.append("  time to first token (ms): " + ", ".join(f"{n}: {ms}" for n, ms in r["ttft_ms"].items()))
        if "decode" in r:
            d = r["decode"]
            lines.append(f"  batch-1 decode at {d['context']} context: {d['decode_tok_s']} tok/s "
                         f"({d['new_tokens']} tokens)")
        for key in ("kv_cache_tokens", "max_num_batched_tokens", "peak_gpu_gib"):
            if key in r:
                lines.append(f"  {key}: {r[key]}")
    for n, c in compare_ttft(results).items():
        lines.append(f"time to first token at {n} tokens: llmctl {c['llmctl_ms']} ms, transformers (sdpa) "
                     f"{c['transformers_ms']} ms: {c['speedup']}x")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_long_context_out"))
    ap.add_argument("--tiny", action="store_true", help="a tiny config and short prompts: checks the script itself")
    ap.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--budget-s", type=float, default=300.0, help="seconds for all parts together")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    args = ap.parse_args()
    unknown = set(args.parts.split(",") + ([args.part] if args.part else [])) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = TINY_SIZES if args.tiny else FULL_SIZES
    if args.part:
        return run_part(args.part, sizes, out)
    deadline = time.monotonic() + args.budget_s
    results = {}
    names = args.parts.split(",")
    for i, name in enumerate(names):
        # a hanging part leaves each later one a minute (what the smallest of them needs on an H100)
        left = deadline - time.monotonic() - 60 * (len(names) - 1 - i)
        if left < 10:
            results[name] = {"part": name, "ok": False, "error": f"skipped: the {args.budget_s:.0f} s budget ran out"}
            continue
        cmd = [sys.executable, __file__, "--part", name, "--out", str(out)] + (["--tiny"] if args.tiny else [])
        with open(out / f"{name}.log", "w") as log:
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=left).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        path = out / f"{name}.json"
        results[name] = json.loads(path.read_text()) if path.exists() else {"part": name, "ok": False}
        if rc != 0 and not results[name].get("error"):  # killed (timeout, signal): what the log says
            tail = (out / f"{name}.log").read_text()[-1500:]
            results[name].update(ok=False, error=f"process ended with {rc}", log_tail=tail)
    ok = all(r.get("ok") for r in results.values())
    summary = summarize(results)
    results["ttft_llmctl_vs_transformers"] = compare_ttft(results)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
