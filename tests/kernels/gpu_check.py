"""On a CUDA machine: run the kernel tests, then time each Triton kernel against its reference on Llama-3-8B shapes.

    python tests/kernels/gpu_check.py [--skip-tests] [--tokens 4096]

Prints one table row per op: shape, reference ms, Triton ms, speedup, and torch's fused alternative where one
exists (F.scaled_dot_product_attention for attention). Times are triton.testing.do_bench medians.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _make_importable() -> dict[str, str]:
    """Let `import llmctl` work on a bare machine where the repository is not pip-installed (root = package)."""
    env = dict(os.environ)
    try:
        import llmctl  # noqa: F401

        return env
    except ImportError:
        pass
    shim = Path(tempfile.mkdtemp()) / "llmctl"
    shim.symlink_to(REPO, target_is_directory=True)
    sys.path.insert(0, str(shim.parent))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim.parent), env.get("PYTHONPATH")]))
    return env


def run_tests(env: dict[str, str]) -> int:
    """pytest on tests/kernels only (its own conftest; the suite-wide one needs the CLI's dependencies)."""
    here = str(REPO / "tests" / "kernels")
    cmd = [sys.executable, "-m", "pytest", here, "-q", "--import-mode=importlib", "-p", "no:cacheprovider",
           "--rootdir", here, "-c", os.devnull, "--confcutdir", here]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=env, cwd=REPO / "tests" / "kernels")


def _bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def _row(op, shape, ref, fast, fused=None):
    ref_ms = _bench(ref) if ref is not None else float("nan")
    fast_ms = _bench(fast)
    fused_ms = _bench(fused) if fused is not None else float("nan")
    speedup = ref_ms / fast_ms
    print(f"{op:<24} {shape:<34} {ref_ms:>9.3f} {fast_ms:>9.3f} {speedup:>8.2f}x {fused_ms:>10.3f}", flush=True)


def run_benchmarks(tokens: int) -> None:
    import torch
    import torch.nn.functional as F

    from llmctl.kernels import activation, attention, kv_write, rmsnorm, rotary

    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    hidden, inter, nh, nkv, hd, bs = 4096, 14336, 32, 8, 128, 16
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16, Llama-3-8B shapes")
    print(f"{'op':<24} {'shape':<34} {'ref ms':>9} {'triton ms':>9} {'speedup':>9} {'torch fused':>10}")

    x = torch.randn(tokens, hidden, device=dev, dtype=dt)
    res = torch.randn(tokens, hidden, device=dev, dtype=dt)
    w = torch.randn(hidden, device=dev, dtype=dt)
    fused_norm = (lambda: F.rms_norm(x, (hidden,), w, 1e-5)) if hasattr(F, "rms_norm") else None
    _row("rms_norm", f"({tokens}, {hidden})", lambda: rmsnorm.rms_norm_ref(x, w, 1e-5),
         lambda: rmsnorm.rms_norm(x, w, 1e-5), fused_norm)
    _row("fused_add_rms_norm", f"({tokens}, {hidden})",
         lambda: rmsnorm.fused_add_rms_norm_ref(x, res, w, 1e-5),
         lambda: rmsnorm.fused_add_rms_norm(x, res, w, 1e-5))

    gate_up = torch.randn(tokens, 2 * inter, device=dev, dtype=dt)
    _row("silu_and_mul", f"({tokens}, 2*{inter})", lambda: activation.silu_and_mul_ref(gate_up),
         lambda: activation.silu_and_mul(gate_up))
    _row("gelu_tanh_and_mul", f"({tokens}, 2*{inter})", lambda: activation.gelu_tanh_and_mul_ref(gate_up),
         lambda: activation.gelu_tanh_and_mul(gate_up))

    q = torch.randn(tokens, nh * hd, device=dev, dtype=dt)
    k = torch.randn(tokens, nkv * hd, device=dev, dtype=dt)
    pos = torch.randint(0, 8192, (tokens,), device=dev)
    inv = 1.0 / (500000 ** (torch.arange(0, hd, 2, device=dev).float() / hd))
    ang = torch.arange(8192, device=dev).float()[:, None] * inv
    cache = torch.cat((ang.cos(), ang.sin()), -1)
    _row("apply_rotary (neox)", f"q({tokens}, {nh}x{hd}) k({nkv}x{hd})",
         lambda: rotary.apply_rotary_ref(q, k, pos, cache, hd, True, hd),
         lambda: rotary.apply_rotary(q, k, pos, cache, hd, True, hd))

    num_blocks = tokens // bs * 4
    kv_cache = torch.randn(2, num_blocks, bs, nkv, hd, device=dev, dtype=dt)
    kk = torch.randn(tokens, nkv, hd, device=dev, dtype=dt)
    vv = torch.randn(tokens, nkv, hd, device=dev, dtype=dt)
    slots = torch.randperm(num_blocks * bs, device=dev)[:tokens]
    _row("write_kv", f"({tokens}, {nkv}, {hd}) bs={bs}", lambda: kv_write.write_kv_ref(kk, vv, kv_cache, slots),
         lambda: kv_write.write_kv(kk, vv, kv_cache, slots))

    # Prefill: 4 sequences of tokens/4, causal, no cache; SDPA on the same data as (B, H, L, D) with GQA.
    n_seq, length = 4, tokens // 4
    qa = torch.randn(tokens, nh, hd, device=dev, dtype=dt)
    ka = torch.randn(tokens, nkv, hd, device=dev, dtype=dt)
    va = torch.randn(tokens, nkv, hd, device=dev, dtype=dt)
    qsl = torch.arange(0, tokens + 1, length, device=dev, dtype=torch.int32)
    qb = qa.view(n_seq, length, nh, hd).transpose(1, 2)
    kb = ka.view(n_seq, length, nkv, hd).transpose(1, 2).repeat_interleave(nh // nkv, 1)
    vb = va.view(n_seq, length, nkv, hd).transpose(1, 2).repeat_interleave(nh // nkv, 1)
    _row("varlen_attention", f"{n_seq}x{length} causal",
         lambda: attention.varlen_attention_ref(qa, ka, va, qsl, hd**-0.5),
         lambda: attention.varlen_attention(qa, ka, va, qsl, hd**-0.5),
         lambda: F.scaled_dot_product_attention(qb, kb, vb, is_causal=True))

    # Paged: chunked prefill of 512 tokens on 1536 of context, and a decode batch of 64 x 2048.
    def paged_case(q_lens, seq_lens):
        blocks = [-(-s // bs) for s in seq_lens]
        cache_ = torch.randn(2, sum(blocks), bs, nkv, hd, device=dev, dtype=dt)
        table = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=dev)
        order = torch.randperm(sum(blocks), device=dev).to(torch.int32)
        start = 0
        for i, n in enumerate(blocks):
            table[i, :n] = order[start : start + n]
            start += n
        qp = torch.randn(sum(q_lens), nh, hd, device=dev, dtype=dt)
        qsl_ = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
        return qp, cache_, qsl_, torch.tensor(seq_lens, dtype=torch.int32, device=dev), table

    args = paged_case([512], [2048])
    kd = torch.randn(1, nh, 2048, hd, device=dev, dtype=dt)
    qd = torch.randn(1, nh, 512, hd, device=dev, dtype=dt)
    mask = torch.ones(512, 2048, dtype=torch.bool, device=dev).tril(2048 - 512)
    _row("paged_attention prefill", "512 new on 1536 cached",
         lambda: attention.paged_attention_ref(*args, hd**-0.5),
         lambda: attention.paged_attention(*args, hd**-0.5),
         lambda: F.scaled_dot_product_attention(qd, kd, kd, attn_mask=mask))
    for batch, ctx in ((64, 2048), (8, 8192), (1, 32768)):
        args = paged_case([1] * batch, [ctx] * batch)
        kd = torch.randn(batch, nh, ctx, hd, device=dev, dtype=dt)
        qd = torch.randn(batch, nh, 1, hd, device=dev, dtype=dt)
        _row("paged_attention decode", f"{batch} seqs x {ctx} ctx",
             lambda: attention.paged_attention_ref(*args, hd**-0.5),
             lambda: attention.paged_attention(*args, hd**-0.5),
             lambda: F.scaled_dot_product_attention(qd, kd, kd))
    print("torch fused: F.rms_norm / F.scaled_dot_product_attention on dense (unpaged) tensors, for scale.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--tokens", type=int, default=4096)
    opts = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this script is for a GPU machine (CI runs tests/kernels in the interpreter)")
        return 2
    env = _make_importable()
    status = 0 if opts.skip_tests else run_tests(env)
    run_benchmarks(opts.tokens)
    return status


if __name__ == "__main__":
    sys.exit(main())
