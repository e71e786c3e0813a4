"""Fixtures for the engine tests: prompts and transformers' greedy tokens for the tiny Llama of tests/conftest.py."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """Seven prompts of mixed lengths (one non-ASCII) for runs where requests finish at different steps."""
    return [
        "Hello, my name is",
        "The quick brown fox jumps over the lazy dog.",
        "Café",
        "Paged attention keeps",
        "Continuous batching lets new requests join",
        "numbers 12345",
        "Ada",
    ]


@pytest.fixture(scope="session")
def hf_greedy(tiny_llama):
    """hf_greedy(prompt_ids, n) -> n greedy tokens from transformers (full forward per step, no EOS stop)."""
    model = tiny_llama[1]
    cache: dict[tuple, list[int]] = {}

    @torch.no_grad()
    def run(prompt_ids: list[int], n: int) -> list[int]:
        key = (tuple(prompt_ids), n)
        if key not in cache:
            ids = list(prompt_ids)
            for _ in range(n):
                logits = model(torch.tensor([ids])).logits[0, -1]
                ids.append(int(logits.argmax()))
            cache[key] = ids[len(prompt_ids) :]
        return cache[key]

    return run
