"""Rotary position embeddings: one cos/sin cache per rope variant, built as transformers builds its frequencies.

Every variant (default, linear, dynamic NTK, llama3, yarn, longrope, proportional) is only a different
float32 cache of shape (cache_len, rotary_dim) whose row p holds [cos(p * inv_freq), sin(p * inv_freq)]
times the variant's attention scaling; applying it is the same op for all of them (kernels/rotary.py).

Two transformers variants depend on the sequence length rather than the position: dynamic NTK and
longrope recompute their frequencies from seq_len = max(position_ids) + 1 of each forward call. A paged
KV cache keeps keys rotated once, at the step that wrote them, so llmctl picks the frequencies per
position: row p is built with seq_len = p + 1. That equals transformers exactly for every sequence that
stays within the original context (original_max_position_embeddings for longrope, the config's
max_position_embeddings for dynamic), and beyond it equals transformers decoding one token at a time; a prompt that is itself
longer than the original context differs (transformers rotates the whole prompt with the long/rescaled
frequencies, llmctl only its tokens past the original context). vLLM makes other choices: its dynamic NTK
uses one base, rescaled for max_position * factor, at every position (so it differs from transformers
even for short sequences), and its longrope switches the whole batch to the long factors when any
position exceeds the original context.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from llmctl.core.errors import ModelReadError, UnsupportedModelError
from llmctl.kernels import dispatch

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional")
_ROPE_TYPE_ALIASES = {"su": "longrope"}  # hub name from before the rename (early Phi-3 configs)


class RotaryEmbedding(nn.Module):
    """Applies a precomputed cos/sin cache to packed q and k: forward(positions (T,), q (T, nh*hd), k (T, nkv*hd)).

    The cache keeps the dtype it was built in (float32 by default) whatever dtype the model is moved
    to; rows are cast to q's dtype at use. Positions must be below `max_position` (the cache length).
    Returns q and k rotated (new tensors from the reference; use the returned values, not the inputs).
    """

    def __init__(
        self,
        head_size: int,
        rotary_dim: int,
        cos_sin_cache: torch.Tensor,  # (cache_len, rotary_dim)
        is_neox_style: bool = True,
        rope_type: str = "default",
    ):
        super().__init__()
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        self.is_neox_style = is_neox_style
        self.rope_type = rope_type
        self.cos_sin_cache = cos_sin_cache  # plain attribute: _apply moves it without casting it

    @property
    def max_position(self) -> int:
        return self.cos_sin_cache.shape[0]

    def _apply(self, fn, recurse=True):
        # Follow the module's device but never its dtype: a bf16 cache would lose the angles' precision.
        target = fn(torch.empty(0, device=self.cos_sin_cache.device))
        self.cos_sin_cache = self.cos_sin_cache.to(device=target.device)
        return super()._apply(fn, recurse)

    def cos_sin_cache_on(self, device: torch.device) -> torch.Tensor:
        """The (cache_len, rotary_dim) cache on `device`, for kernels that apply it themselves (rotary_write_kv)."""
        if self.cos_sin_cache.device != device:  # a module shared by models on two devices follows its caller
            self.cos_sin_cache = self.cos_sin_cache.to(device)
        return self.cos_sin_cache

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        op = dispatch.get_op("apply_rotary", q.device)
        cos_sin_cache = self.cos_sin_cache_on(q.device)
        return op(q, k, positions, cos_sin_cache, self.rotary_dim, self.is_neox_style, self.head_size)

    def extra_repr(self) -> str:
        return (
            f"head_size={self.head_size}, rotary_dim={self.rotary_dim}, max_position={self.max_position}, "
            f"rope_type={self.rope_type}, is_neox_style={self.is_neox_style}"
        )


# --- frequencies, written as transformers' modeling_rope_utils computes them (same float32 ops) ---


def _base_inv_freq(base: float, dim: int, device=None) -> torch.Tensor:
    """(dim // 2,) float32: base ** (-2i / dim)."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))


def _cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float) -> torch.Tensor:
    """positions (P,) float32, inv_freq (D/2,) or (P, D/2) -> (P, D): [cos | sin] * scaling."""
    freqs = positions[:, None] * inv_freq  # (P, D/2)
    return torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1)


def _yarn_inv_freq(p: dict, dim: int, base: float, max_position: int, device) -> tuple[torch.Tensor, float]:
    factor = p.get("factor")
    orig = p["original_max_position_embeddings"]
    if factor is None:  # DeepSeek-V3 style: the ratio of the two context lengths is the factor
        factor = max_position / orig

    def get_mscale(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = p.get("mscale"), p.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = p.get("beta_fast") or 32
    beta_slow = p.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(orig / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # prevent a division by zero in the ramp

    pos_freqs = base ** (torch.arange(0, dim, 2).to(device=device, dtype=torch.float) / dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp.to(device=device, dtype=torch.float)
    inv_freq = (
        inv_freq_interpolation * (1 - extrapolation_factor) + inv_freq_extrapolation * extrapolation_factor
    )
    return inv_freq, attention_factor


def _llama3_inv_freq(p: dict, dim: int, base: float, device) -> torch.Tensor:
    inv_freq = _base_inv_freq(base, dim, device)
    factor = p["factor"]
    low_freq_factor, high_freq_factor = p["low_freq_factor"], p["high_freq_factor"]
    old_context_len = p["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed, inv_freq_llama)


def _require(p: Mapping, rope_type: str, *keys: str) -> None:
    missing = [key for key in keys if p.get(key) is None]
    if missing:
        raise ModelReadError(
            f"rope_scaling of type {rope_type!r} lacks {', '.join(missing)}",
            hint="check rope_scaling / rope_parameters in the model's config.json",
        )


def build_cos_sin_cache(
    head_size: int, rotary_dim: int, max_position: int, base: float, rope_scaling: Mapping | None, device=None
) -> tuple[torch.Tensor, str]:
    """The float32 (cache_len, rotary_dim) cache of a rope variant, and its normalised rope_type.

    max_position is the model's max_position_embeddings (what transformers reads); the cache covers it
    and, for linear / dynamic / yarn, the longer context the scaling opens (as vLLM sizes it).
    """
    p = dict(rope_scaling or {})
    rope_type = p.get("rope_type") or p.get("type") or "default"
    rope_type = _ROPE_TYPE_ALIASES.get(rope_type, rope_type)
    if rope_type not in ROPE_TYPES:
        raise UnsupportedModelError(
            f"unsupported rope type {rope_type!r}", hint=f"llmctl implements: {', '.join(ROPE_TYPES)}"
        )
    if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_size:
        raise UnsupportedModelError(f"rotary_dim {rotary_dim} must be even and within head_size {head_size}")
    if rope_type in ("yarn", "longrope", "llama3"):
        p.setdefault("original_max_position_embeddings", max_position)
        if p["original_max_position_embeddings"] is None:
            p["original_max_position_embeddings"] = max_position
    dim = rotary_dim
    cache_len = max_position
    scaling = 1.0

    if rope_type == "default":
        inv_freq = _base_inv_freq(base, dim, device)
    elif rope_type == "linear":
        _require(p, rope_type, "factor")
        inv_freq = _base_inv_freq(base, dim, device) / p["factor"]
        orig = p.get("original_max_position_embeddings") or max_position
        cache_len = max(max_position, int(orig * p["factor"]))
    elif rope_type == "proportional":
        # Gemma-style: the first partial_rotary_factor of the head rotates with exponents over the whole
        # head, the remaining pairs get frequency 0 (identity); rotary_dim is the whole head here.
        angles = int(p.get("partial_rotary_factor", 1.0) * head_size // 2)
        rotated = 1.0 / (
            base ** (torch.arange(0, 2 * angles, 2, dtype=torch.int64, device=device).float() / head_size)
        )
        inv_freq = torch.cat((rotated, torch.zeros(dim // 2 - angles, dtype=torch.float32, device=device)))
        inv_freq = inv_freq / p.get("factor", 1.0)
    elif rope_type == "llama3":
        _require(p, rope_type, "factor", "low_freq_factor", "high_freq_factor")
        inv_freq = _llama3_inv_freq(p, dim, base, device)
    elif rope_type == "yarn":
        _require(p, rope_type, "original_max_position_embeddings")
        inv_freq, scaling = _yarn_inv_freq(p, dim, base, max_position, device)
        factor = p.get("factor") or max_position / p["original_max_position_embeddings"]
        cache_len = max(max_position, int(p["original_max_position_embeddings"] * factor))
    elif rope_type == "dynamic":
        _require(p, rope_type, "factor")
        factor = p["factor"]
        orig = p.get("original_max_position_embeddings") or max_position
        cache_len = max(max_position, orig, int(orig * factor))
        t = torch.arange(cache_len, dtype=torch.int64, device=device).float()
        short = _cos_sin(t[:orig], _base_inv_freq(base, dim, device), 1.0)
        # Row p >= orig: the base transformers derives for seq_len = p + 1.
        seq_len = torch.arange(orig + 1, cache_len + 1, dtype=torch.float64, device=device)
        bases = base * ((factor * seq_len / orig) - (factor - 1)) ** (dim / (dim - 2))  # (P',)
        exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
        long_inv_freq = 1.0 / (bases.float()[:, None] ** exponents)  # (P', D/2)
        return torch.cat((short, _cos_sin(t[orig:], long_inv_freq, 1.0))), rope_type
    else:  # longrope
        _require(p, rope_type, "short_factor", "long_factor")
        orig = p["original_max_position_embeddings"]
        for key in ("short_factor", "long_factor"):
            if len(p[key]) != dim // 2:
                raise ModelReadError(
                    f"rope_scaling {key} has {len(p[key])} entries, expected rotary_dim / 2 = {dim // 2}"
                )
        factor = p.get("factor") or max_position / orig  # Phi-3: the ratio of the two context lengths
        scaling = p.get("attention_factor")
        if scaling is None:
            scaling = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
        shape = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
        short = 1.0 / (torch.tensor(p["short_factor"], dtype=torch.float32, device=device) * base**shape)
        long = 1.0 / (torch.tensor(p["long_factor"], dtype=torch.float32, device=device) * base**shape)
        cache_len = max(max_position, orig)
        t = torch.arange(cache_len, dtype=torch.int64, device=device).float()
        # Row p uses the factors transformers picks for seq_len = p + 1: short while p + 1 <= orig.
        return torch.cat((_cos_sin(t[:orig], short, scaling), _cos_sin(t[orig:], long, scaling))), rope_type

    t = torch.arange(cache_len, dtype=torch.int64, device=device).float()
    return _cos_sin(t, inv_freq, scaling), rope_type


# --- construction: one shared module per distinct configuration (every layer uses the same cache) ---

_ROPE_CACHE: dict[tuple, RotaryEmbedding] = {}


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _scaling_key(rope_scaling: Mapping | None) -> tuple:
    """What of rope_scaling changes the cache: spelled `type` or `rope_type`, theta passed apart, default = None."""
    p = dict(rope_scaling or {})
    rope_type = p.pop("rope_type", None) or p.pop("type", None) or "default"
    p.pop("type", None)
    p.pop("rope_theta", None)
    if rope_type != "proportional":
        p.pop("partial_rotary_factor", None)  # rotary_dim carries it
    if rope_type == "default":
        p = {}
    return _ROPE_TYPE_ALIASES.get(rope_type, rope_type), _freeze(p)


def get_rope(
    head_dim: int,
    rotary_dim: int,
    max_position: int,
    base: float,
    rope_scaling: dict | None,
    is_neox_style: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> RotaryEmbedding:
    """The rotary embedding for these parameters, shared between all callers that ask for the same one.

    rope_scaling is a transformers rope_parameters / hub rope_scaling dict (`rope_type` or `type`,
    `factor`, ...) or None for plain rope. max_position is the model's max_position_embeddings, as in
    vLLM: where rope_scaling lacks original_max_position_embeddings (or, for yarn / longrope, factor)
    it stands for config.max_position_embeddings in transformers' formulas, and the cache has at least
    max_position rows (more where the scaling opens a longer context: linear / dynamic up to
    max_position * factor, yarn up to original * factor). The frequencies are always computed in
    float32; dtype is the dtype the cache is stored in.
    """
    scaling_key = _scaling_key(rope_scaling)
    key = (head_dim, rotary_dim, max_position, float(base), scaling_key, is_neox_style, dtype, str(device))
    rope = _ROPE_CACHE.get(key)
    if rope is None:
        cache, rope_type = build_cos_sin_cache(head_dim, rotary_dim, max_position, base, rope_scaling, device)
        rope = RotaryEmbedding(head_dim, rotary_dim, cache.to(dtype), is_neox_style, rope_type)
        _ROPE_CACHE[key] = rope
    return rope


def _getter(config: Any):
    if isinstance(config, Mapping):
        return lambda name: config.get(name)
    return lambda name: getattr(config, name, None)


def _config_max_position(get) -> int:
    max_position = get("max_position_embeddings") or get("n_positions")  # n_positions: GPT-J's config.json name
    if max_position is None:
        raise ModelReadError("the config has no max_position_embeddings to size the rotary cache")
    return int(max_position)


def rope_parameters_from_config(config: Any, head_dim: int, layer_type: str | None = None) -> dict:
    """Normalise a config's rope settings to one dict: rope_type, rope_theta, rotary_dim and the scaling keys.

    Reads transformers-5 `rope_parameters` (flat, or nested by layer type) and the older hub attributes:
    `rope_scaling` + `rope_theta`, GPT-J's `rotary_dim`, GPT-NeoX's `rotary_pct` / `rotary_emb_base`,
    Phi's `partial_rotary_factor`, Phi-3's top-level `original_max_position_embeddings`. Nested per-layer
    hub quirks (Gemma-3's `rope_local_base_freq`) are read through the transformers config object.
    """
    get = _getter(config)
    params: dict = dict(get("rope_scaling") or {})
    rope_parameters = get("rope_parameters") or {}
    nested = sorted(key for key, value in rope_parameters.items() if isinstance(value, Mapping))
    if nested or layer_type is not None:
        if layer_type not in nested:
            raise UnsupportedModelError(
                f"rope_parameters are given per layer type ({', '.join(nested) or 'none'}), "
                f"the model definition asked for {layer_type!r}"
            )
        rope_parameters = rope_parameters[layer_type]
    params.update(rope_parameters)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    params["rope_type"] = _ROPE_TYPE_ALIASES.get(rope_type, rope_type)
    params["rope_theta"] = float(params.get("rope_theta") or get("rope_theta") or get("rotary_emb_base") or 10000.0)

    partial = params.get("partial_rotary_factor")
    for name in ("partial_rotary_factor", "rotary_pct"):
        if partial is None:
            partial = get(name)
    if isinstance(get("rotary_dim"), int) and not isinstance(get("rotary_dim"), bool):
        rotary_dim = get("rotary_dim")  # GPT-J / CodeGen: an absolute count of rotated dims per head
    else:
        rotary_dim = int(head_dim * (partial if partial is not None else 1.0))
    if params["rope_type"] == "proportional":
        params["partial_rotary_factor"] = partial if partial is not None else 1.0
        rotary_dim = head_dim
    params["rotary_dim"] = rotary_dim

    max_position = _config_max_position(get)
    if params["rope_type"] in ("llama3", "yarn", "longrope"):
        # transformers gives a top-level original_max_position_embeddings priority (Phi-3 stores it there).
        if get("original_max_position_embeddings") is not None:
            params["original_max_position_embeddings"] = get("original_max_position_embeddings")
        elif params.get("original_max_position_embeddings") is None:
            params["original_max_position_embeddings"] = max_position
    if params["rope_type"] in ("yarn", "longrope") and params.get("factor") is None:
        # Phi-3 / DeepSeek-V3: the factor is the ratio of the two context lengths.
        params["factor"] = max_position / params["original_max_position_embeddings"]
    if params["rope_type"] == "dynamic":
        params["original_max_position_embeddings"] = max_position  # transformers' dynamic NTK reads this one
    return params


def get_rope_from_config(
    config: Any,
    head_dim: int,
    is_neox_style: bool = True,
    max_position: int | None = None,
    layer_type: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> RotaryEmbedding:
    """get_rope() with everything read from an HF config (PretrainedConfig or its config.json dict).

    The frequencies depend only on the config; max_position (default: config.max_position_embeddings)
    only sets the cache length, e.g. to the engine's max_model_len. layer_type picks one entry of a
    rope_parameters dict nested by layer type (Gemma-3's "full_attention" / "sliding_attention").
    """
    params = rope_parameters_from_config(config, head_dim, layer_type)
    if max_position is None:
        max_position = _config_max_position(_getter(config))
    rotary_dim = params.pop("rotary_dim")
    base = params.pop("rope_theta")
    scaling = None if params["rope_type"] == "default" else params
    return get_rope(head_dim, rotary_dim, int(max_position), base, scaling, is_neox_style, dtype, device)
