"""SamplingParams refuses every value vLLM refuses: NaN and infinities anywhere, seeds torch cannot take."""

from __future__ import annotations

import pytest

from llmctl import SamplingParams
from llmctl.core.errors import InvalidValueError, UsageError

NAN, INF = float("nan"), float("inf")
FLOAT_FIELDS = ["temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_floats_are_refused(field, value):
    with pytest.raises(InvalidValueError, match=field) as info:
        SamplingParams(**{field: value})
    assert isinstance(info.value, ValueError) and isinstance(info.value, UsageError)  # vLLM callers catch ValueError
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("seed", [10**23, 2**64, -(2**63) - 1, 1.5, "7", True])
def test_seeds_torch_cannot_take_are_refused(seed):
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=seed)


@pytest.mark.parametrize("seed", [0, -(2**63), 2**64 - 1, None])
def test_seeds_at_the_edges_are_accepted_and_seed_a_generator(seed):
    import torch

    params = SamplingParams(seed=seed)
    if seed is not None:
        torch.Generator().manual_seed(params.seed)  # what the sampler does with it


@pytest.mark.parametrize("field,value", [("temperature", 0.7), ("top_p", 0.5), ("min_p", 0.1),
                                         ("repetition_penalty", 1.3), ("presence_penalty", -2.0)])
def test_finite_values_in_range_still_pass(field, value):
    assert getattr(SamplingParams(**{field: value}), field) == value


def test_stop_strings_must_be_valid_unicode():
    with pytest.raises(InvalidValueError, match="stop string"):
        SamplingParams(stop=["ok", "\ud800"])


def test_replace_validates_again():
    import dataclasses

    with pytest.raises(InvalidValueError):
        dataclasses.replace(SamplingParams(), temperature=NAN)
