"""SamplingParams: vLLM-compatible generation settings, validated on construction (no torch import).

Interface (stable; the engine and the CLI build it):

    SamplingParams(n=1, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0,
                   repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                   seed=None, stop=None, stop_token_ids=None, ignore_eos=False,
                   max_tokens=16, min_tokens=0, logprobs=None, prompt_logprobs=None,
                   skip_special_tokens=True, include_stop_str_in_output=False,
                   spaces_between_special_tokens=True)

    .stop               -> list[str]  (a single str is wrapped; None -> [])
    .stop_token_ids     -> list[int]  (None -> [])
    .top_k              -> 0 or -1 both mean "off"; `.top_k_or_none` gives None when off
    .is_greedy          -> temperature == 0 (within 1e-5): argmax, top-k/top-p/min-p ignored
    .all_stop_token_ids(eos_token_ids) -> set[int]: stop_token_ids, plus EOS unless ignore_eos
    .stop_buffer_length -> characters a streaming caller must hold back so a stop string is never shown

Semantics follow vLLM: temperature 0 is greedy; top_p in (0, 1]; min_p in [0, 1];
repetition_penalty > 0 (1 = off, HF's rule over prompt and output tokens);
presence/frequency penalties in [-2, 2] (OpenAI's rule over output tokens);
max_tokens=None means "until the model's context is full" (the engine decides the cap);
logprobs=k asks for the sampled token plus the k most likely ones (-1: the whole vocabulary).
Every number must be finite (NaN and infinities are refused, as vLLM does); seed must fit torch's 64-bit
generator seed. Only n=1 is supported. Invalid values raise InvalidValueError (a UsageError and a
ValueError, as vLLM raises), never an assert.
The dataclass is frozen (the engine shares it between steps): derive a variant with
dataclasses.replace(params, max_tokens=...), which validates again.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmctl.core.errors import InvalidValueError
from llmctl.core.values import is_finite_number, seed_problem, text_problem

# Below this a temperature counts as 0 (greedy); vLLM uses the same epsilon.
SAMPLING_EPS = 1e-5


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite int or float: NaN would pass every range test below (all its comparisons are False)."""
    return is_finite_number(value)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample one completion; names, defaults and meaning as vLLM's SamplingParams."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    spaces_between_special_tokens: bool = True

    def __post_init__(self) -> None:
        # Normalise first (frozen dataclass: object.__setattr__), then validate.
        stop = self.stop
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        elif isinstance(stop, (list, tuple)):
            stop = list(stop)
        else:
            raise InvalidValueError(f"stop must be a string or a list of strings, got {type(stop).__name__}.")
        object.__setattr__(self, "stop", stop)
        stop_ids = [] if self.stop_token_ids is None else self.stop_token_ids
        if not isinstance(stop_ids, (list, tuple)):
            raise InvalidValueError(f"stop_token_ids must be a list of ints, got {type(stop_ids).__name__}.")
        object.__setattr__(self, "stop_token_ids", list(stop_ids))
        if _is_number(self.temperature):
            object.__setattr__(self, "temperature", float(self.temperature))
        self._validate()

    def _validate(self) -> None:
        if not _is_int(self.n) or self.n < 1:
            raise InvalidValueError(f"n must be a positive integer, got {self.n!r}.")
        if self.n != 1:
            raise InvalidValueError(
                f"n={self.n} is not supported: llmctl returns one completion per prompt.",
                hint="Repeat the prompt in the list (with different seeds) to get several completions.",
            )
        if not _is_number(self.temperature) or self.temperature < 0.0:
            raise InvalidValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}.")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise InvalidValueError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise InvalidValueError(f"top_k must be an integer >= 1, or 0 / -1 to disable it, got {self.top_k!r}.")
        if not _is_number(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise InvalidValueError(f"min_p must be in [0, 1], got {self.min_p!r}.")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0.0:
            raise InvalidValueError(
                f"repetition_penalty must be a finite number > 0 (1 disables it), got {self.repetition_penalty!r}."
            )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2.0 <= value <= 2.0:
                raise InvalidValueError(f"{name} must be in [-2, 2], got {value!r}.")
        why = seed_problem(self.seed)
        if why is not None:
            raise InvalidValueError(f"seed {why}.")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InvalidValueError(f"every stop string must be a non-empty string, got {s!r}.")
            if text_problem(s) is not None:
                raise InvalidValueError(f"stop string {s!r} {text_problem(s)}.")
        for t in self.stop_token_ids:
            if not _is_int(t) or t < 0:
                raise InvalidValueError(f"stop_token_ids must be non-negative integers, got {t!r}.")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise InvalidValueError(f"max_tokens must be at least 1 (or None), got {self.max_tokens!r}.")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise InvalidValueError(f"min_tokens must be >= 0, got {self.min_tokens!r}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})."
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < -1):
                raise InvalidValueError(
                    f"{name} must be None, -1 (whole vocabulary) or an integer >= 0, got {value!r}."
                )
        for name in ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output",
                     "spaces_between_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")

    @property
    def is_greedy(self) -> bool:
        """Temperature 0: the sampler takes the argmax; top-k, top-p and min-p do not matter."""
        return self.temperature < SAMPLING_EPS

    @property
    def top_k_or_none(self) -> int | None:
        """top_k when it filters, None when it is off (0 or -1)."""
        return self.top_k if self.top_k > 0 else None

    @property
    def stop_buffer_length(self) -> int:
        """How many trailing characters a streaming caller must hold back (vLLM's output_text_buffer_length)."""
        if not self.stop or self.include_stop_str_in_output:
            return 0
        return max(len(s) for s in self.stop) - 1

    def all_stop_token_ids(self, eos_token_ids: int | list[int] | tuple[int, ...] | set[int] | None) -> set[int]:
        """Token ids that end the request: stop_token_ids, and the EOS ids unless ignore_eos."""
        ids = set(self.stop_token_ids)
        if not self.ignore_eos and eos_token_ids is not None:
            ids.update([eos_token_ids] if isinstance(eos_token_ids, int) else eos_token_ids)
        return ids
