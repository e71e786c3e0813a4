"""Continuous batching: which tokens of which sequences run in the next step, with chunked prefill and preemption."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from llmctl.core.engine.config import EngineConfig
from llmctl.core.engine.kv_cache import BlockManager
from llmctl.core.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    """The step's packed batch: (sequence, number of new tokens) in batch order, and who was preempted."""

    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    """Schedules prefill and decode tokens together in one packed batch (vLLM V1's unified scheduling).

    Every step, running sequences come first, in arrival order: each gets the tokens it has not yet
    computed (one for a decode, a chunk of the prompt for a long prefill), within the token budget.
    When the KV cache cannot grow a running sequence, the most recently admitted running sequence is
    preempted (its blocks are freed and it goes back to the front of the queue to be recomputed). Then,
    if nobody was preempted, waiting sequences join while there are seats, tokens and blocks left.
    `config` is resolved (EngineConfig.resolve): its max_num_seqs, max_num_batched_tokens and max_model_len are set.
    """

    def __init__(self, config: EngineConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def check_fits(self, num_tokens: int) -> str | None:
        """Why a sequence of num_tokens tokens can never run, or None when it can."""
        if num_tokens > self.config.max_model_len:
            return f"the prompt has {num_tokens} tokens, more than max_model_len={self.config.max_model_len}"
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if num_tokens > capacity:
            return f"the prompt has {num_tokens} tokens, more than the KV cache holds ({capacity})"
        return None

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        now = time.time()

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            if n <= 0:  # nothing to compute (cannot happen between steps: a token was just sampled)
                i += 1
                continue
            while not self.block_manager.grow(seq, seq.num_computed_tokens + n):
                victim = self.running.pop()  # the most recently admitted
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                out.scheduled.append((seq, n))
                budget -= n
                i += 1

        if out.preempted:
            return out
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            n = min(seq.num_uncomputed_tokens, budget)
            if not self.block_manager.grow(seq, seq.num_computed_tokens + n):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            if seq.metrics.first_scheduled_time is None:
                seq.metrics.first_scheduled_time = now
            self.running.append(seq)
            out.scheduled.append((seq, n))
            budget -= n
        return out

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.metrics.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Take a finished sequence out of the running set and free its blocks."""
        seq.status = SequenceStatus.FINISHED
        self.block_manager.free(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
