"""Mamba / Falcon-Mamba parameter counts from config against transformers' meta-device build."""

from __future__ import annotations

import pytest

from llmctl.core.estimate import parameter_count
from llmctl.core.spec import spec_from_config

TINY = dict(vocab_size=101, hidden_size=64, num_hidden_layers=3, state_size=8, conv_kernel=3, expand=2)
CASES = {
    "tied": TINY,
    "untied-bias": dict(TINY, tie_word_embeddings=False, use_bias=True, use_conv_bias=False),
    "rank-auto": dict(TINY, time_step_rank="auto", intermediate_size=96),
}


@pytest.mark.parametrize("arch", ["MambaForCausalLM", "FalconMambaForCausalLM"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_count_matches_transformers(arch, case):
    import torch
    import transformers

    config = getattr(transformers, arch.replace("ForCausalLM", "Config"))(**CASES[case])
    with torch.device("meta"):
        model = getattr(transformers, arch)(config)
    expected = sum(p.numel() for p in model.parameters())  # a tied head is one tensor, counted once
    raw = dict(config.to_dict(), architectures=[arch])
    if case == "rank-auto":  # hub files may keep "auto": ceil(hidden / 16), as transformers resolves it
        assert raw["time_step_rank"] == 4
        raw["time_step_rank"] = "auto"
    spec = spec_from_config(raw)
    count = parameter_count(spec)
    assert (count.total, count.active, count.source) == (expected, expected, "config")
