"""Incremental detokenizer (prefix/read offsets, as vLLM and TGI) and the stop-string search.

Interface (stable; the engine calls it once per generated token):

    detok = IncrementalDetokenizer(tokenizer, prompt_token_ids, skip_special_tokens=True,
                                   spaces_between_special_tokens=True)
    delta = detok.step(new_token_id)   # the text this token adds ("" while a character is incomplete)
    detok.text                         # the output text so far (prompt excluded)
    detok.output_token_ids             # the generated ids seen so far

    truncated, stop_str = find_stop(detok.text, len(delta), params.stop, params.include_stop_str_in_output)
    # (None, None): no stop string; else the text to keep and the stop string that matched

Why offsets: decoding one token alone is wrong for byte-level BPE (a CJK character or an emoji
spans several tokens, each a partial UTF-8 sequence) and for SentencePiece (a lone "▁word"
decodes without its leading space). So each step decodes a short window of ids twice —
ids[prefix_offset:read_offset] (already emitted) and ids[prefix_offset:] (with the new token) —
and emits the difference, unless the new text ends in U+FFFD (an incomplete character: wait for
the next token). The window starts a few prompt tokens back so the first output token keeps its
leading space. Decoding uses clean_up_tokenization_spaces=False (as vLLM's incremental path), so
`text` equals tokenizer.decode(output ids, clean_up_tokenization_spaces=False) for byte-level BPE.
"""

from __future__ import annotations

from typing import Any, Sequence

# How many prompt tokens the first window reaches back (vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET).
INITIAL_OFFSET = 5
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas; one instance per request."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self._ids: list[int] = list(prompt_token_ids)
        self._num_prompt = len(self._ids)
        self.prefix_offset = max(self._num_prompt - INITIAL_OFFSET, 0)
        self.read_offset = self._num_prompt
        self.text = ""

    @property
    def output_token_ids(self) -> list[int]:
        return self._ids[self._num_prompt:]

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        kwargs = {"skip_special_tokens": self.skip_special_tokens, "clean_up_tokenization_spaces": False}
        if not self.spaces_between_special_tokens:
            # Only slow (Python) tokenizers read this flag; tokenizers-backed ones ignore it.
            kwargs["spaces_between_special_tokens"] = False
        return self.tokenizer.decode(ids, **kwargs)

    def step(self, new_token_id: int) -> str:
        """Add one generated token; return the text it completes (may be "" or several characters)."""
        self._ids.append(int(new_token_id))
        prefix_text = self._decode(self._ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self._ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            delta = new_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self._ids)
            self.text += delta
            return delta
        return ""


def find_stop(
    text: str,
    new_delta_len: int,
    stop: Sequence[str],
    include_stop_str_in_output: bool = False,
) -> tuple[str | None, str | None]:
    """Look for a stop string that ends inside the last `new_delta_len` characters of `text`.

    A stop string may start in an earlier delta (it spans deltas); one lying wholly before the
    new delta was already found on an earlier call. When several match, the one that starts
    first in the text wins (the first listed on a tie). Returns (None, None) when none matches,
    else (text cut before the stop string, or after it when include_stop_str_in_output, stop_str).
    """
    if new_delta_len <= 0 or not stop:
        return None, None
    best_index = -1
    best_stop: str | None = None
    for stop_str in stop:
        if not stop_str:
            continue
        # The match must end after the old text: start no earlier than len - delta - len(stop) + 1.
        start = max(len(text) - new_delta_len - len(stop_str) + 1, 0)
        index = text.find(stop_str, start)
        if index != -1 and (best_index == -1 or index < best_index):
            best_index, best_stop = index, stop_str
    if best_stop is None:
        return None, None
    end = best_index + len(best_stop) if include_stop_str_in_output else best_index
    return text[:end], best_stop
