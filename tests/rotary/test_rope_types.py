"""Every rope_type against transformers' LlamaRotaryEmbedding (ROPE_INIT_FUNCTIONS) and apply_rotary_pos_emb."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from llmctl.model_defs.layers.rotary import get_rope, get_rope_from_config

AWKWARD_POSITIONS = [0, 1, 2, 33, 100, 255, 511, 1000, 1023, 2047, 4095]
NUM_HEADS, NUM_KV_HEADS = 4, 2


def _positions(limit: int) -> torch.Tensor:
    return torch.tensor([p for p in AWKWARD_POSITIONS if p < limit], dtype=torch.long)


def _long_factors(n: int, seed: int) -> tuple[list[float], list[float]]:
    gen = torch.Generator().manual_seed(seed)
    return (1 + torch.rand(n, generator=gen)).tolist(), (1 + 20 * torch.rand(n, generator=gen)).tolist()


def _cases():
    short64, long64 = _long_factors(32, 1)
    short48, long48 = _long_factors(48, 2)
    # (id, head_dim, max_position_embeddings, rope_parameters, positions transformers rotates as one batch
    #  and llmctl must match: within the original context for the length-dependent types)
    return [
        ("default-64", 64, 2048, {"rope_type": "default", "rope_theta": 10000.0}, 2048),
        ("default-128-theta5e5", 128, 4096, {"rope_type": "default", "rope_theta": 500000.0}, 4096),
        ("linear-80", 80, 1024, {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}, 2048),
        (
            "llama3-128",
            128,
            4096,
            {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 512,
            },
            4096,
        ),
        (
            "yarn-96",
            96,
            2048,
            {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 512},
            2048,
        ),
        (
            "yarn-64-deepseek-mscale",
            64,
            4096,
            {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 40.0,
                "original_max_position_embeddings": 128,
                "mscale": 0.707,
                "mscale_all_dim": 1.0,
                "beta_fast": 32,
                "beta_slow": 1,
            },
            4096,
        ),
        (
            "yarn-128-attention-factor-no-truncate",
            128,
            2048,
            {
                "rope_type": "yarn",
                "rope_theta": 1000000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 512,
                "attention_factor": 0.8,
                "beta_fast": 16.0,
                "beta_slow": 2.0,
                "truncate": False,
            },
            2048,
        ),
        (
            "yarn-80-factor-from-lengths",
            80,
            2048,
            {"rope_type": "yarn", "rope_theta": 10000.0, "factor": None, "original_max_position_embeddings": 256},
            2048,
        ),
        ("dynamic-64", 64, 1024, {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}, 1024),
        (
            "longrope-64-phi3",
            64,
            2048,
            {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "short_factor": short64,
                "long_factor": long64,
                "original_max_position_embeddings": 256,
            },
            256,
        ),
        (
            "longrope-96-explicit",
            96,
            1024,
            {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "short_factor": short48,
                "long_factor": long48,
                "factor": 4.0,
                "attention_factor": 1.25,
                "original_max_position_embeddings": 600,
            },
            600,
        ),
    ]


CASES = _cases()


def _llama_config(head_dim: int, max_pos: int, rope_parameters: dict) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=head_dim * NUM_HEADS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters=dict(rope_parameters),
    )


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cos_sin_and_rotation_match_transformers(case, h):
    _, head_dim, max_pos, rope_parameters, limit = case
    config = _llama_config(head_dim, max_pos, rope_parameters)
    positions = _positions(limit)
    hf_cos, hf_sin = h.hf_cos_sin(LlamaRotaryEmbedding(config), positions)

    rope = get_rope_from_config(config, head_dim)
    assert rope.rotary_dim == head_dim and rope.max_position >= max_pos
    cos, sin = h.llmctl_cos_sin(rope, positions)
    # Same float32 ops in the same order as transformers: equal up to libm rounding of a few ulps.
    torch.testing.assert_close(cos, hf_cos, rtol=0, atol=2e-6)
    torch.testing.assert_close(sin, hf_sin, rtol=0, atol=2e-6)

    q, k = h.random_qk(len(positions), NUM_HEADS, NUM_KV_HEADS, head_dim)
    q_out, k_out = rope(positions, q, k)
    hf_q, hf_k = apply_rotary_pos_emb(h.to_hf(q, head_dim), h.to_hf(k, head_dim), hf_cos[None], hf_sin[None])
    assert q_out.shape == q.shape and k_out.shape == k.shape and q_out.dtype == q.dtype
    torch.testing.assert_close(q_out, h.from_hf(hf_q), rtol=0, atol=2e-5)  # |q| ~ 4: 2e-6 of cos error each
    torch.testing.assert_close(k_out, h.from_hf(hf_k), rtol=0, atol=2e-5)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_get_rope_takes_the_same_parameters_directly(case, h):
    """get_rope(rope_scaling=...) builds the cache get_rope_from_config builds (E1's Llama calls this one)."""
    _, head_dim, max_pos, rope_parameters, _ = case
    config = _llama_config(head_dim, max_pos, rope_parameters)
    from_config = get_rope_from_config(config, head_dim)
    scaling = dict(config.rope_parameters)
    base = scaling.pop("rope_theta")
    direct = get_rope(head_dim, head_dim, max_pos, base, scaling)
    assert torch.equal(direct.cos_sin_cache, from_config.cos_sin_cache)
    assert get_rope_from_config(config, head_dim) is from_config  # every layer gets the one shared module


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_max_position_only_sets_the_cache_length(case):
    """An engine's max_model_len (shorter or longer) changes how many rows exist, never their values."""
    _, head_dim, max_pos, rope_parameters, _ = case
    config = _llama_config(head_dim, max_pos, rope_parameters)
    full = get_rope_from_config(config, head_dim).cos_sin_cache
    for max_model_len in (max_pos // 2, 3 * full.shape[0] // 2):
        cache = get_rope_from_config(config, head_dim, max_position=max_model_len).cos_sin_cache
        assert cache.shape[0] >= max_model_len
        rows = min(cache.shape[0], full.shape[0])
        # Same formulas; only libm's vectorised-versus-tail paths over tensors of other lengths may differ.
        torch.testing.assert_close(cache[:rows], full[:rows], rtol=0, atol=2e-6)


def _hub_cases():
    """config.json as the hub stores it: rope_scaling with the old `type` key, rope_theta at top level."""
    short, long = _long_factors(32, 3)
    return [
        ("hub-linear", 64, {"type": "linear", "factor": 4.0}, 1024, 500000.0, 4096),
        ("hub-dynamic", 128, {"type": "dynamic", "factor": 2.0}, 512, 10000.0, 512),
        (
            "hub-llama3",
            128,
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 256,
            },
            2048,
            500000.0,
            2048,
        ),
        ("hub-yarn-qwen", 80, {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}, 512, 1e6, 2048),
        (
            "hub-longrope",
            64,
            {"type": "longrope", "short_factor": short, "long_factor": long},
            2048,
            10000.0,
            2048,
        ),
    ]


HUB_CASES = _hub_cases()


@pytest.mark.parametrize("case", HUB_CASES, ids=[c[0] for c in HUB_CASES])
def test_hub_form_configs(case, h):
    _, head_dim, rope_scaling, max_pos, theta, limit = case
    hub = {
        "hidden_size": head_dim * NUM_HEADS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "head_dim": head_dim,
        "max_position_embeddings": max_pos,
        "rope_scaling": dict(rope_scaling),
        "rope_theta": theta,
    }
    if rope_scaling.get("type") == "longrope":
        hub["original_max_position_embeddings"] = 256  # Phi-3 keeps it next to max_position_embeddings
        limit = 256
    config = LlamaConfig(**{key: (dict(v) if isinstance(v, dict) else v) for key, v in hub.items()})
    positions = _positions(limit)
    hf_cos, hf_sin = h.hf_cos_sin(LlamaRotaryEmbedding(config), positions)
    for source in (hub, config):  # the raw config.json dict and the transformers config object
        rope = get_rope_from_config(source, head_dim)
        cos, sin = h.llmctl_cos_sin(rope, positions)
        torch.testing.assert_close(cos, hf_cos, rtol=0, atol=2e-6)
        torch.testing.assert_close(sin, hf_sin, rtol=0, atol=2e-6)


def _beyond(rope_parameters: dict, head_dim: int, max_pos: int, orig: int, h) -> None:
    """Past the original context: row p equals transformers called for the one position p (seq_len = p + 1)."""
    config = _llama_config(head_dim, max_pos, rope_parameters)
    rope = get_rope_from_config(config, head_dim)
    for p in (orig, orig + 1, orig + 37, rope.max_position - 1):
        position = torch.tensor([p])
        hf_cos, hf_sin = h.hf_cos_sin(LlamaRotaryEmbedding(config), position)
        cos, sin = h.llmctl_cos_sin(rope, position)
        # The per-row base is computed vectorised (float64 -> float32) rather than as a python float:
        # a 1-ulp difference in a frequency moves an angle of up to ~p radians by ~p * 6e-8.
        torch.testing.assert_close(cos, hf_cos, rtol=0, atol=max(2e-6, p * 1.2e-7))
        torch.testing.assert_close(sin, hf_sin, rtol=0, atol=max(2e-6, p * 1.2e-7))


def test_dynamic_beyond_context_matches_one_token_at_a_time(h):
    _beyond({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 3.0}, 64, 512, 512, h)


def test_longrope_beyond_context_uses_long_factors(h):
    short, long = _long_factors(40, 4)
    params = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "short_factor": short,
        "long_factor": long,
        "original_max_position_embeddings": 300,
    }
    _beyond(params, 80, 1200, 300, h)
    # And the switch really happens at the original context: row 299 short, row 300 long.
    rope = get_rope_from_config(_llama_config(80, 1200, params), 80)
    assert rope.max_position == 1200
    short_only = get_rope(80, 80, 1200, 10000.0, {**params, "long_factor": short})
    assert torch.equal(rope.cos_sin_cache[:300], short_only.cos_sin_cache[:300])
    assert not torch.allclose(rope.cos_sin_cache[300:], short_only.cos_sin_cache[300:])
