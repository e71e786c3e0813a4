"""LLM.embed refuses what it cannot embed with one typed error: text that is not Unicode, token ids that are
not integers or lie outside the vocabulary (never a crash inside the embedding lookup)."""

from __future__ import annotations

import pytest

from llmctl import LLM
from llmctl.core.errors import InvalidValueError


@pytest.fixture(scope="module")
def tiny_bert(tiny_model):
    return LLM(str(tiny_model("bert_cls")), task="embed", device="cpu")


@pytest.mark.parametrize("inputs,words", [
    (["hello", "\ud800"], "not valid Unicode"),
    ([{"prompt_token_ids": [2, 1.5]}], "list of integers"),
    ([{"prompt_token_ids": [2, True]}], "list of integers"),
    ([{"prompt_token_ids": "2 3"}], "list of integers"),
    ([{"prompt_token_ids": [2, 10**6]}], "outside the vocabulary"),
    ([{"prompt_token_ids": [-1]}], "outside the vocabulary"),
])
def test_bad_inputs_are_refused(tiny_bert, inputs, words):
    with pytest.raises(InvalidValueError, match=words):
        tiny_bert.embed(inputs)


def test_a_prompt_that_is_not_unicode_is_refused(tiny_bert):
    with pytest.raises(InvalidValueError, match="prompt"):
        tiny_bert.embed(["hello"], prompt="\udcff: ")


def test_good_inputs_still_embed(tiny_bert):
    outs = tiny_bert.embed(["hello world", {"prompt_token_ids": [2, 10, 3]}])
    assert len(outs) == 2 and all(len(o.outputs.embedding) == 32 for o in outs)
