"""Incremental detokenizer on byte-level BPE, SentencePiece byte-fallback and WordPiece; stop strings."""

from __future__ import annotations

import pytest

from llmctl.core.engine.detokenizer import IncrementalDetokenizer, find_stop

UNICODE_TEXTS = [
    "Hello naïve café, déjà vu 😀🎉 and 日本語のテキスト",
    "über straße 👍 中文文本 ça va?",
    "👨‍👩‍👧 family 🇫🇷 flag, ñandú",
]


def decode(tok, ids, **kw):
    return tok.decode(ids, skip_special_tokens=kw.get("skip", True), clean_up_tokenization_spaces=False)


def stream(tok, prompt_ids, output_ids, **kw) -> tuple[IncrementalDetokenizer, list[str]]:
    detok = IncrementalDetokenizer(tok, prompt_ids, **kw)
    return detok, [detok.step(t) for t in output_ids]


@pytest.mark.parametrize("text", UNICODE_TEXTS)
@pytest.mark.parametrize("tokenizer", ["byte_bpe_tokenizer", "sentencepiece_tokenizer"])
def test_stream_equals_full_decode(tokenizer, text, request):
    tok = request.getfixturevalue(tokenizer)
    prompt = tok.encode("the quick brown fox", add_special_tokens=False)
    output = tok.encode(" " + text, add_special_tokens=False)
    detok, deltas = stream(tok, prompt, output)
    assert "".join(deltas) == detok.text
    # The output text is what decoding the whole sequence adds after the prompt.
    assert decode(tok, prompt) + detok.text == decode(tok, prompt + output)
    assert not any("\ufffd" in d for d in deltas)
    # Multi-byte characters span tokens here, so some steps must have waited ("" delta).
    assert "" in deltas
    assert detok.output_token_ids == output


def test_byte_level_without_prompt_equals_decode_of_output(byte_bpe_tokenizer):
    tok = byte_bpe_tokenizer
    for text in UNICODE_TEXTS:
        output = tok.encode(text, add_special_tokens=False)
        detok, _ = stream(tok, [], output)
        assert detok.text == decode(tok, output) == text


def test_sentencepiece_keeps_leading_space_of_first_token(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    full = tok.encode("hello world", add_special_tokens=False)
    prompt = tok.encode("hello", add_special_tokens=False)
    assert full[: len(prompt)] == prompt, "the test needs a token boundary after 'hello'"
    output = full[len(prompt) :]
    detok, _ = stream(tok, prompt, output)
    assert detok.text == " world"
    assert decode(tok, output) == "world"  # why the prompt window matters: alone, the space is lost


def test_wordpiece_real_tokenizer(minilm_tokenizer):
    tok = minilm_tokenizer
    ids = tok.encode("Tokenization of detokenizers: naïve café 日本語 embeddings!", add_special_tokens=False)
    prompt, output = ids[:3], ids[3:]
    assert any(t.startswith("##") for t in tok.convert_ids_to_tokens(output)), "needs continuation pieces"
    detok, deltas = stream(tok, prompt, output)
    assert decode(tok, prompt) + detok.text == decode(tok, ids)
    assert "".join(deltas) == detok.text


def test_special_tokens_skipped_or_kept(byte_bpe_tokenizer):
    tok = byte_bpe_tokenizer
    eos = tok.eos_token_id
    output = tok.encode("hello world", add_special_tokens=False) + [eos]
    skipped, _ = stream(tok, [], output)
    kept, _ = stream(tok, [], output, skip_special_tokens=False)
    assert skipped.text == "hello world"
    assert kept.text == "hello world<eos>"
    # Tokenizers-backed tokenizers ignore spaces_between_special_tokens; passing it must not break decoding.
    plain, _ = stream(tok, [], output, skip_special_tokens=False, spaces_between_special_tokens=False)
    assert plain.text == kept.text


def test_find_stop_spanning_two_deltas():
    # "###" arrives as "#" at the end of one delta and "##" at the start of the next.
    text = "answer: 42 #"
    assert find_stop(text, 2, ["###"]) == (None, None)
    text += "## more"
    assert find_stop(text, 7, ["###"]) == ("answer: 42 ", "###")
    assert find_stop(text, 7, ["###"], include_stop_str_in_output=True) == ("answer: 42 ###", "###")


def test_find_stop_earliest_match_and_old_text():
    text = "one two three"
    assert find_stop(text, len(text), ["three", "two"]) == ("one ", "two")
    # A stop string wholly before the new delta was handled on an earlier step: not found again.
    assert find_stop(text, 3, ["two"]) == (None, None)
    assert find_stop(text, 0, ["three"]) == (None, None)
    assert find_stop(text, 5, []) == (None, None)


def test_stop_string_while_streaming(byte_bpe_tokenizer):
    tok = byte_bpe_tokenizer
    output = tok.encode("the quick brown fox jumps over", add_special_tokens=False)
    for include, expected in [(False, "the quick br"), (True, "the quick brown f")]:
        detok = IncrementalDetokenizer(tok, [])
        result = None
        for t in output:
            delta = detok.step(t)
            truncated, stop_str = find_stop(detok.text, len(delta), ["own f"], include)
            if stop_str is not None:
                result = truncated
                break
        assert result == expected
