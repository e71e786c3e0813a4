"""One request inside the engine: its tokens, KV blocks, progress, sampling state and results so far."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from llmctl.core.engine.outputs import Logprob, RequestMetrics


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted and waiting to be recomputed
    RUNNING = "running"  # holds KV blocks and is scheduled every step
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """A request's token sequence and bookkeeping.

    `num_computed_tokens` counts the tokens whose K/V are in the cache. A step schedules the next
    `num_tokens - num_computed_tokens` tokens (or a chunk of them); once the cache has caught up with
    every token, the step samples a new one. Preemption frees the blocks and resets the count to 0:
    the prompt and the tokens generated so far are recomputed later (vLLM's recompute preemption).
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: Any  # SamplingParams
    metrics: RequestMetrics
    sampling_state: Any = None  # the sampler's SamplingState (shares output_token_ids)
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    # Results.
    output_logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    text: str = ""
    detokenizer: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    error: str | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def token_ids(self, start: int, end: int) -> list[int]:
        """Tokens start:end of prompt + output, without copying the whole sequence."""
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p : end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - p]

    def wants_prompt_logprobs(self) -> bool:
        return getattr(self.params, "prompt_logprobs", None) is not None

    def prompt_logprobs_pending(self, start: int, end: int) -> range:
        """Positions p in [start, end) whose logits give the logprob of prompt token p + 1 not yet recorded.

        The list starts as [None] (the first token has no logprob); after preemption the positions are
        recomputed, and those already recorded are not collected twice.
        """
        if not self.wants_prompt_logprobs():
            return range(0)
        if self.prompt_logprobs is None:
            self.prompt_logprobs = [None]
        first = len(self.prompt_logprobs) - 1
        return range(max(start, first), min(end, self.prompt_len - 1))
