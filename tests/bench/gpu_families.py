"""Every dense family at real size on one GPU: llmctl bench --random-weights --against transformers, one JSON line each.

Not collected by pytest. On an H100 (about 7 minutes for the 12 families of issue 6 plus the bge-large embedding
figure; starcoder2-3b, olmo-2-1124-7b and granite-3.0-2b-instruct, added by issue 14, come after them):

    python tests/bench/gpu_families.py --out $OUT/families.jsonl

Each model's result is appended to --out as soon as it finishes ({"family", "status": "ok", "summary", "result"});
a failing model becomes {"status": "error", "error", "traceback"} and the run goes on; models not started before
--budget-s seconds (default 550: the lead's call has 600) are recorded as {"status": "skipped"}. A table is printed at the end.
Random weights are drawn on the device by both sides (transformers from_config under torch.device, llmctl
load_format="dummy"), then transformers' tensors are copied into llmctl on the device (handover "device"), so
greedy tokens are comparable (in bf16 with random weights they agree only for a few tokens: near-flat logits).
Prove it on a CPU with tiny shapes of the same architectures:

    python tests/bench/gpu_families.py --tiny --device cpu --out /tmp/families.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "bench_configs"
EMBED_MODEL = "bge-large-en-v1.5"
# The families issue 6 names first, so a run cut short still has them.
FAMILIES = (
    "gemma-2-9b", "phi-3-mini-4k-instruct", "gpt-j-6b", "gemma-7b", "gemma-3-4b-it-text", "phi-2", "gpt2-xl",
    "pythia-6.9b", "opt-6.7b", "bloom-7b1", "falcon-7b", "mpt-7b", "starcoder2-3b", "olmo-2-1124-7b",
    "granite-3.0-2b-instruct",
)  # fmt: skip

# --tiny: size keys of every family's config.json -> a 2-layer, 64-wide shape (the other keys are kept).
_TINY = {
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "word_embed_proj_dim": 64,
    "num_hidden_layers": 2, "n_layer": 2, "n_layers": 2,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4,
    "intermediate_size": 128, "ffn_dim": 128,
    "head_dim": 16, "query_pre_attn_scalar": 16, "vocab_size": 512, "sliding_window_pattern": 2,
    "initializer_range": 0.15, "init_std": 0.15,  # spread logits apart so float rounding never flips a greedy argmax
}  # fmt: skip
_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def tiny_config(raw: dict) -> dict:
    """The same architecture keys at a tiny size: 2 layers, hidden 64, 4 heads (KV heads in the same ratio),
    vocabulary 512 (token ids folded into it), sliding windows of 32 tokens, partial rotary in the same share."""
    out = dict(raw)
    heads = raw.get("num_attention_heads") or raw.get("n_head") or raw.get("n_heads")
    hidden = raw.get("hidden_size") or raw.get("n_embd") or raw.get("d_model")
    for key, value in _TINY.items():
        if out.get(key) is not None:
            out[key] = value
    for key in ("num_key_value_heads", "num_kv_heads"):
        if out.get(key):
            out[key] = max(1, round(4 * raw[key] / heads))
    if out.get("n_inner"):
        out["n_inner"] = 128
    if out.get("rotary_dim"):  # GPT-J: rotary on the first rotary_dim of each head
        out["rotary_dim"] = max(2, 2 * round(raw["rotary_dim"] / (raw.get("head_dim") or hidden // heads) * 8))
    for key in ("sliding_window", "sliding_window_size"):
        if isinstance(out.get(key), int):
            out[key] = min(out[key], 32)
    vocab = out["vocab_size"]
    for key in _TOKEN_KEYS:
        value = out.get(key)
        if isinstance(value, int):
            out[key] = value % vocab
        elif isinstance(value, list):
            out[key] = [v % vocab for v in value]
    return out


def model_folder(name: str, tiny: bool, scratch: Path) -> Path:
    """The fixture folder, or a shrunken copy of its config.json in scratch."""
    folder = ROOT / name
    if not tiny:
        return folder
    out = scratch / name
    out.mkdir(parents=True, exist_ok=True)
    raw = json.loads((folder / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(tiny_config(raw), indent=2))
    return out


def bench_config(name: str, folder: Path, args):
    from llmctl.core.bench import BenchConfig

    common = dict(model=str(folder), random_weights=True, dtype=args.dtype, device=args.device,
                  against="transformers", handover="device", seed=0)  # fmt: skip
    if name == EMBED_MODEL:  # issue 5's protocol: 10,000 inputs of 16-512 tokens on CUDA, batches of 64
        return BenchConfig(**common, num_prompts=args.embed_prompts, batch_size=64)
    return BenchConfig(
        **common, batch_size=args.batch_size, input_len=args.input_len, output_len=args.output_len,
        num_prompts=args.num_prompts, repeats=args.repeats, max_model_len=args.input_len + args.output_len,
        max_num_seqs=max(args.batch_size, args.num_prompts), kv_cache_memory=args.kv_cache_gib << 30,
    )  # fmt: skip


def summary(result: dict) -> dict:
    """The few numbers the final table shows."""
    ours, hf, ratio = result["llmctl"], result["transformers"], result["ratio_llmctl_over_transformers"]
    if result.get("task") == "embed":
        return {
            "llmctl_sentences_per_s": ours["sentences_per_s"],
            "transformers_sentences_per_s": hf["sentences_per_s"],
            "ratio": ratio["sentences_per_s"],
            "cosine_min": result["cosine_similarity"]["min"],
        }
    s = result["settings"]
    return {
        "llmctl_decode_tok_s": ours["decode_tok_s"],
        "transformers_decode_tok_s": hf["decode_tok_s"],
        "ratio": ratio["decode_tok_s"],
        "llmctl_batch_output_tok_s": ours["batch_output_tok_s"],
        "transformers_batch_output_tok_s": hf["batch_output_tok_s"],
        "greedy_tokens_matching": result["greedy_tokens_matching"],
        "output_len": s["output_len"],
        # every one of num_prompts prompts, submitted together, produced exactly output_len tokens
        "batched_generation_ok": ours["offline_output_tokens"] == s["num_prompts"] * s["output_len"],
    }


def run_one(name: str, args, scratch: Path) -> dict:
    from llmctl.core.bench import run_bench

    folder = model_folder(name, args.tiny, scratch)
    t0 = time.perf_counter()
    try:
        result = run_bench(bench_config(name, folder, args), log=lambda m: print(f"  [{name}] {m}", file=sys.stderr))
        record = {"family": name, "status": "ok", "summary": summary(result), "result": result}
    except Exception as exc:  # one model's failure must not lose the others
        record = {"family": name, "status": "error", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-4000:]}  # fmt: skip
    record["elapsed_s"] = round(time.perf_counter() - t0, 2)
    return record


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(records: list[dict]) -> None:
    head = f"{'family':24} {'llmctl tok/s':>12} {'hf tok/s':>10} {'ratio':>6} {'greedy':>8} {'batched':>8} {'time':>6}"
    print(head)
    print("-" * len(head))
    for r in records:
        s = r.get("summary") or {}
        if r["status"] != "ok":
            print(f"{r['family']:24} {r['status'].upper()}: {r.get('error', r.get('reason', ''))[:100]}")
        elif "cosine_min" in s:
            print(f"{r['family']:24} embeddings: llmctl {s['llmctl_sentences_per_s']:.0f} sentences/s, transformers "
                  f"{s['transformers_sentences_per_s']:.0f}, ratio {s['ratio']:.2f}, min cosine {s['cosine_min']:.5f}")
        else:
            match = s["greedy_tokens_matching"]
            greedy = "-" if match is None else f"{match}/{s['output_len']}"
            print(f"{r['family']:24} {_fmt(s['llmctl_decode_tok_s'], '12.1f')} "
                  f"{_fmt(s['transformers_decode_tok_s'], '10.1f')} {_fmt(s['ratio'], '6.2f')} {greedy:>8} "
                  f"{'yes' if s['batched_generation_ok'] else 'NO':>8} {r['elapsed_s']:6.0f}")  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", help="run only this fixture (repeatable), e.g. gemma-2-9b")
    p.add_argument("--out", default="families.jsonl", help="JSON lines file, appended to (default: %(default)s)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--tiny", action="store_true", help="2-layer tiny shapes of the same architectures")
    p.add_argument("--no-embed", action="store_true", help=f"skip the {EMBED_MODEL} embedding run")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--embed-prompts", type=int, default=None, help="default: 10000 on CUDA, 256 on CPU")
    p.add_argument("--kv-cache-gib", type=int, default=4, help="llmctl's KV cache (enough for the short protocol)")
    p.add_argument("--budget-s", type=float, default=550.0,
                   help="start no model that would end after this many seconds (estimate: the slowest so far)")
    args = p.parse_args(argv)
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    if args.embed_prompts is None:
        args.embed_prompts = 256 if args.device == "cpu" else 10_000
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    names = list(FAMILIES) if args.no_embed else [EMBED_MODEL, *FAMILIES]
    if args.only:
        unknown = set(args.only) - set(FAMILIES) - {EMBED_MODEL}
        if unknown:
            print(f"unknown fixture(s): {', '.join(sorted(unknown))}; known: {', '.join([EMBED_MODEL, *FAMILIES])}",
                  file=sys.stderr)  # fmt: skip
            return 2
        names = [n for n in names if n in args.only]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records = []
    slowest = 0.0  # the next model is assumed to take as long as the slowest so far
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            if time.perf_counter() - start + slowest > args.budget_s:
                record = {"family": name, "status": "skipped",
                          "reason": f"would not finish within the {args.budget_s:.0f} s budget"}  # fmt: skip
            else:
                print(f"== {name}", file=sys.stderr)
                record = run_one(name, args, Path(scratch))
                slowest = max(slowest, record["elapsed_s"])
                _free(args.device)
            records.append(record)
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"== {name}: {record['status']} ({record.get('elapsed_s', 0)} s)", file=sys.stderr)
    print(f"\n{len(records)} models, {time.perf_counter() - start:.0f} s, {args.device}, {args.dtype}"
          f"{', tiny shapes' if args.tiny else ''}; JSON lines in {out}")  # fmt: skip
    print_table(records)
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
