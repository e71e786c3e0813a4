"""The attention layer: rotate q/k, write new k/v into the paged cache and attend, through the dispatched kernels."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.kernels.dispatch import get_op
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.rotary import RotaryEmbedding


class Attention(nn.Module):
    """q (T, nh*hd), k/v (T, nkv*hd) of one packed batch -> (T, nh*hd).

    With ctx.kv_caches set, the new k/v go to ctx.kv_caches[layer_idx] at the batch's slot_mapping and
    each sequence attends over its whole cached context; with ctx.kv_caches None the batch attends
    within itself (no earlier context).
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        scale: float,
        num_kv_heads: int,
        layer_idx: int,
        sliding_window: int | None = None,
        logit_softcap: float | None = None,
        alibi_slopes: torch.Tensor | None = None,
    ):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.layer_idx = layer_idx
        self.sliding_window = sliding_window
        self.logit_softcap = logit_softcap
        if alibi_slopes is not None:
            self.register_buffer("alibi_slopes", alibi_slopes, persistent=False)
        else:
            self.alibi_slopes = None

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        ctx: ForwardContext,
        rope: RotaryEmbedding | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """rope (with positions (T,)): q and k are not rotated yet; with a KV cache one op rotates them, writes the
        cache and attends (q/k's contents after are unspecified, so they must not be needed after), else rope runs
        first."""
        meta = ctx.attn_metadata
        if rope is not None and positions is None:
            raise ValueError("Attention.forward got a rope without positions")
        q = q.reshape(-1, self.num_heads, self.head_dim)  # (T, nh, hd)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)  # (T, nkv, hd)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        options = dict(
            scale=self.scale,
            sliding_window=self.sliding_window,
            logit_softcap=self.logit_softcap,
            alibi_slopes=self.alibi_slopes,
            causal=meta.causal,
        )
        if ctx.kv_caches is None:
            if rope is not None:
                q, k = rope(positions, q, k)
            out = get_op("varlen_attention", q.device)(q, k, v, meta.query_start_loc, **options)
        else:
            kv_cache = ctx.kv_caches[self.layer_idx]
            if rope is None:
                get_op("write_kv", q.device)(k, v, kv_cache, meta.slot_mapping)
                # k/v hold the batch's new keys: prefill reads them there, not through the cache
                out = get_op("paged_attention", q.device)(
                    q, kv_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables, k=k, v=v, **options
                )
            else:  # at decode one kernel rotates, writes the cache and attends
                out = get_op("rope_paged_attention", q.device)(
                    q, k, v, kv_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables, positions,
                    rope.cos_sin_cache_on(q.device), rope.rotary_dim, rope.is_neox_style, meta.slot_mapping, **options,
                )
        return out.reshape(-1, self.num_heads * self.head_dim)

    def extra_repr(self) -> str:
        extra = f", sliding_window={self.sliding_window}" if self.sliding_window else ""
        return f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}{extra}"
