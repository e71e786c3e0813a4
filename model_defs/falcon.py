"""Inference-only Falcon models (tiiuae/falcon-7b/40b/180b, falcon-rw with ALiBi) compatible with HF weights."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.model_defs.base import CausalLM
from llmctl.model_defs.layers.act_fn import get_act_fn
from llmctl.model_defs.layers.alibi import bloom_alibi_slopes
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.linear import Linear
from llmctl.model_defs.layers.rotary import get_rope_from_config
from llmctl.model_defs.weights_mapper import WeightsMapper


def num_kv_heads_of(config) -> int:
    """k/v heads: num_kv_heads (new decoder architecture, e.g. falcon-40b), 1 (multi_query, falcon-7b), else all."""
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def _num_ln_in_parallel_attn(config) -> int | None:
    # The new decoder architecture defaults to two norms (ln_attn, ln_mlp); a config may set 1 (one shared norm).
    value = getattr(config, "num_ln_in_parallel_attn", None)
    return 2 if value is None and config.new_decoder_architecture else value


class FalconAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = num_kv_heads_of(config)
        self.head_dim = config.hidden_size // self.num_heads
        self.new_decoder_architecture = config.new_decoder_architecture
        qkv_out = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.query_key_value = Linear(config.hidden_size, qkv_out, bias=config.bias)
        self.dense = Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        scale = self.head_dim**-0.5
        if config.alibi:
            # falcon-rw: transformers (like the original code) builds slope * key_position in bfloat16 and
            # scales it by 1/sqrt(head_dim) with the scores. The slopes are rounded to bfloat16 here to match;
            # the product is not (exact anyway for power-of-two head counts, whose slopes are powers of two,
            # at positions below 256; otherwise within bfloat16 rounding of transformers).
            slopes = bloom_alibi_slopes(self.num_heads).bfloat16().float() * scale
            self.rotary_emb = None
        else:
            slopes = None
            self.rotary_emb = get_rope_from_config(config, self.head_dim, is_neox_style=True)
        self.attn = Attention(self.num_heads, self.head_dim, scale, self.num_kv_heads, layer_idx, alibi_slopes=slopes)

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fused (T, out) -> q (T, nh*hd), k and v (T, nkv*hd) for the checkpoint's three layouts."""
        nh, nkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        if self.new_decoder_architecture:
            # Grouped per kv head: [q_0 .. q_{g-1} | k | v] for each of the nkv groups.
            qkv = qkv.view(-1, nkv, nh // nkv + 2, hd)  # (T, nkv, g + 2, hd)
            q, k, v = qkv[:, :, :-2], qkv[:, :, -2], qkv[:, :, -1]
        elif nkv == nh:
            qkv = qkv.view(-1, nh, 3, hd)  # per head [q_h | k_h | v_h], as BLOOM
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q, k, v = qkv.split([nh * hd, hd, hd], dim=-1)  # multi-query: all q heads, then one k and one v
        return q.reshape(-1, nh * hd), k.reshape(-1, nkv * hd), v.reshape(-1, nkv * hd)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self._split(self.query_key_value(hidden_states))
        # The attention layer applies the rope (None with ALiBi): with a KV cache, in the cache-write kernel.
        return self.dense(self.attn(q, k, v, ctx, rope=self.rotary_emb, positions=positions))


class FalconMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        ffn = getattr(config, "ffn_hidden_size", None) or 4 * config.hidden_size
        self.dense_h_to_4h = Linear(config.hidden_size, ffn, bias=config.bias)
        self.act = get_act_fn(getattr(config, "activation", "gelu"))
        self.dense_4h_to_h = Linear(ffn, config.hidden_size, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class FalconDecoderLayer(nn.Module):
    """Parallel attention + MLP (falcon-7b/40b) or sequential (falcon-rw); one or two input norms."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.new_decoder_architecture = config.new_decoder_architecture
        self.parallel_attn = config.parallel_attn
        self.num_ln = _num_ln_in_parallel_attn(config)
        self.self_attention = FalconAttention(config, layer_idx)
        self.mlp = FalconMLP(config)
        # The same choice of norms as transformers' FalconDecoderLayer.__init__.
        if not config.parallel_attn:
            self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
            self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        elif self.num_ln == 2:
            self.ln_attn = nn.LayerNorm(config.hidden_size, eps=eps)
            self.ln_mlp = nn.LayerNorm(config.hidden_size, eps=eps)
        else:
            self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        residual = hidden_states
        if self.new_decoder_architecture and self.num_ln == 2:
            attn_in, mlp_in = self.ln_attn(hidden_states), self.ln_mlp(hidden_states)
        else:
            attn_in = mlp_in = self.input_layernorm(hidden_states)
        attn_out = self.self_attention(positions, attn_in, ctx)
        if not (self.new_decoder_architecture or self.parallel_attn):  # sequential: attention, then the MLP
            residual = residual + attn_out
            return residual + self.mlp(self.post_attention_layernorm(residual))
        return residual + (self.mlp(mlp_in) + attn_out)


class FalconModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList([FalconDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden_states = self.word_embeddings(input_ids)  # (T, H)
        for layer in self.h:
            hidden_states = layer(positions, hidden_states, ctx)
        return self.ln_f(hidden_states)


class FalconForCausalLM(CausalLM):
    backbone_cls = FalconModel
    backbone_name = "transformer"
    input_embedding_name = "word_embeddings"
    tie_word_embeddings_default = True
    weights_mapper = WeightsMapper(base_prefix="transformer")
