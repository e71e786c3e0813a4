"""SamplingParams: vLLM defaults, normalisation, typed validation errors, no torch on import."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from llmctl.core.engine.sampling_params import SamplingParams
from llmctl.core.errors import UsageError


def test_defaults_are_vllms():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.0, 0.0, 0.0)
    assert p.seed is None and p.stop == [] and p.stop_token_ids == []
    assert (p.ignore_eos, p.max_tokens, p.min_tokens) == (False, 16, 0)
    assert p.logprobs is None and p.prompt_logprobs is None
    assert p.skip_special_tokens and not p.include_stop_str_in_output and p.spaces_between_special_tokens
    assert not p.is_greedy


def test_normalisation():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(stop_token_ids=(3, 4)).stop_token_ids == [3, 4]
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(top_k=0).top_k_or_none is None
    assert SamplingParams(top_k=-1).top_k_or_none is None
    assert SamplingParams(top_k=7).top_k_or_none == 7
    assert SamplingParams(max_tokens=None).max_tokens is None


def test_replace_validates_again():
    p = dataclasses.replace(SamplingParams(), max_tokens=3)
    assert p.max_tokens == 3
    with pytest.raises(UsageError):
        dataclasses.replace(SamplingParams(min_tokens=2), max_tokens=1)


def test_stop_token_helpers():
    p = SamplingParams(stop_token_ids=[7])
    assert p.all_stop_token_ids(2) == {2, 7}
    assert p.all_stop_token_ids([2, 3]) == {2, 3, 7}
    assert SamplingParams(stop_token_ids=[7], ignore_eos=True).all_stop_token_ids(2) == {7}
    assert SamplingParams(stop=["ab", "abcd"]).stop_buffer_length == 3
    assert SamplingParams(stop=["abcd"], include_stop_str_in_output=True).stop_buffer_length == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 2},
        {"n": 0},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -2},
        {"top_k": 2.5},
        {"min_p": 1.1},
        {"repetition_penalty": 0.0},
        {"presence_penalty": 2.5},
        {"frequency_penalty": -3},
        {"seed": "7"},
        {"stop": 5},
        {"stop": [""]},
        {"stop_token_ids": [-1]},
        {"max_tokens": 0},
        {"min_tokens": -1},
        {"min_tokens": 5, "max_tokens": 4},
        {"logprobs": -2},
        {"prompt_logprobs": 1.5},
        {"ignore_eos": "yes"},
    ],
)
def test_invalid_values_raise_usage_error(kwargs):
    with pytest.raises(UsageError):
        SamplingParams(**kwargs)


def test_n_error_says_why():
    with pytest.raises(UsageError, match="n=3 is not supported"):
        SamplingParams(n=3)


def test_import_does_not_pull_torch():
    code = (
        "import sys; import llmctl.core.engine.sampling_params; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
