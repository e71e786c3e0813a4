"""Which prefill attention tiles compile and run for small head dims on this GPU (not collected by pytest).

    python tests/bench/gpu_probe_small_heads.py

For head_dim 16 and 32 (bf16, fp32), varlen_attention and paged_attention (new k/v given) run once with the
default tile and a few explicit ones; each line says ok (and the max error against the reference) or the error.
"""

from __future__ import annotations

import torch

from llmctl.kernels.attention import paged_attention, paged_attention_ref, varlen_attention, varlen_attention_ref
from llmctl.kernels.tuning import AttnLaunch

TILES = [None, AttnLaunch(64, 64, 4, 2), AttnLaunch(64, 32, 4, 2), AttnLaunch(32, 32, 4, 1), AttnLaunch(16, 16, 2, 1)]


def main() -> None:
    dev = torch.device("cuda")
    for hd in (16, 32):
        for dtype in (torch.bfloat16, torch.float32):
            torch.manual_seed(0)
            t, nh, nkv, bs = 37, 4, 2, 16
            q = torch.randn(t, nh, hd, device=dev, dtype=dtype)
            k = torch.randn(t, nkv, hd, device=dev, dtype=dtype)
            v = torch.randn(t, nkv, hd, device=dev, dtype=dtype)
            blocks = -(-t // bs)
            cache = torch.zeros(2, blocks, bs, nkv, hd, device=dev, dtype=dtype)
            cache[0].view(-1, nkv, hd)[:t] = k
            cache[1].view(-1, nkv, hd)[:t] = v
            qsl = torch.tensor([0, t], dtype=torch.int32, device=dev)
            lens = torch.tensor([t], dtype=torch.int32, device=dev)
            tables = torch.arange(blocks, dtype=torch.int32, device=dev)[None]
            scale = hd**-0.5
            ref_v = varlen_attention_ref(q, k, v, qsl, scale=scale).float()
            ref_p = paged_attention_ref(q, cache, qsl, lens, tables, scale=scale).float()
            for tile in TILES:
                for name, fn, ref in (
                    ("varlen", lambda: varlen_attention(q, k, v, qsl, scale=scale, launch=tile), ref_v),
                    ("paged", lambda: paged_attention(q, cache, qsl, lens, tables, scale=scale, k=k, v=v,
                                                      launch=tile), ref_p),
                ):
                    try:
                        out = fn()
                        torch.cuda.synchronize()
                        err = (out.float() - ref).abs().max().item()
                        print(f"hd {hd} {dtype} {name} {tile}: ok, max err {err:.3g}", flush=True)
                    except Exception as e:  # noqa: BLE001 - a probe: report every failure and go on
                        print(f"hd {hd} {dtype} {name} {tile}: {type(e).__name__}: {str(e)[:160]}", flush=True)


if __name__ == "__main__":
    main()
