"""Shared helpers for the rotary tests: transformers' cos/sin and rotated q/k for the same inputs as llmctl's."""

from __future__ import annotations

import pytest
import torch

from llmctl.model_defs.layers import rotary


@pytest.fixture(autouse=True)
def _fresh_rope_cache():
    """Each test builds its own modules: get_rope shares modules by value, tests must not see each other's."""
    rotary._ROPE_CACHE.clear()
    yield
    rotary._ROPE_CACHE.clear()


def hf_cos_sin(rotary_emb: torch.nn.Module, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, rotary_dim) from a transformers rotary embedding module for one sequence of positions."""
    x = torch.zeros(1, dtype=torch.float32)
    cos, sin = rotary_emb(x, positions[None])  # (1, T, rotary_dim)
    return cos[0], sin[0]


def llmctl_cos_sin(rope: rotary.RotaryEmbedding, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (T, rotary_dim) cos and sin, read from llmctl's cache (which stores one half of each)."""
    cos, sin = rope.cos_sin_cache[positions].chunk(2, dim=-1)
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


def random_qk(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(num_tokens, num_heads * head_dim, generator=gen).to(dtype)
    k = torch.randn(num_tokens, num_kv_heads * head_dim, generator=gen).to(dtype)
    return q, k


def to_hf(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(T, n * hd) packed -> (1, n, T, hd), the layout transformers' apply_rotary_pos_emb takes."""
    return x.view(x.shape[0], -1, head_dim).transpose(0, 1)[None]


def from_hf(x: torch.Tensor) -> torch.Tensor:
    """(1, n, T, hd) -> (T, n * hd)."""
    return x[0].transpose(0, 1).reshape(x.shape[2], -1)


@pytest.fixture
def h():
    """The helpers above, for test modules (importlib mode cannot import conftest by name)."""
    import types

    return types.SimpleNamespace(
        hf_cos_sin=hf_cos_sin, llmctl_cos_sin=llmctl_cos_sin, random_qk=random_qk, to_hf=to_hf, from_hf=from_hf
    )
