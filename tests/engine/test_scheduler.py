"""Scheduler unit tests: queueing, token budget and chunked prefill, preemption by recompute."""

from __future__ import annotations

import pytest

from llmctl.core.engine.config import EngineConfig
from llmctl.core.engine.kv_cache import BlockManager
from llmctl.core.engine.outputs import RequestMetrics
from llmctl.core.engine.sampling_params import SamplingParams
from llmctl.core.engine.scheduler import Scheduler
from llmctl.core.engine.sequence import Sequence, SequenceStatus
from llmctl.core.errors import UsageError


def _limits(**limits) -> EngineConfig:
    """The config a Scheduler reads: max_num_seqs, max_num_batched_tokens, max_model_len (no model behind it)."""
    return EngineConfig("tiny", **limits)


def _seq(name: str, n_prompt: int, max_tokens: int) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens)
    return Sequence(name, None, list(range(1, n_prompt + 1)), params, RequestMetrics(0.0))


def _drive(sched: Scheduler, seqs: list[Sequence], max_steps: int = 1000, log: list | None = None):
    """Run steps as the engine does (fake token 7 per sample); return the per-step SchedulerOutputs.

    log, when given, receives one list per step of (request_id, first position, number of tokens).
    """
    for s in seqs:
        sched.add(s)
    steps = []
    while sched.has_unfinished():
        out = sched.schedule()
        assert not out.is_empty, "the scheduler stalled with work left"
        steps.append(out)
        if log is not None:
            log.append([(seq.request_id, seq.num_computed_tokens, n) for seq, n in out.scheduled])
        for seq, n in out.scheduled:
            assert seq.status is SequenceStatus.RUNNING
            # The cache must cover every token the step writes.
            assert len(seq.block_table) * sched.block_manager.block_size >= seq.num_computed_tokens + n
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens:
                seq.output_token_ids.append(7)
                if seq.num_output_tokens == seq.params.max_tokens:
                    sched.finish(seq)
        assert len(steps) < max_steps
    return steps


def test_queueing_beyond_max_num_seqs():
    sched = Scheduler(_limits(max_num_seqs=2, max_num_batched_tokens=100, max_model_len=64), BlockManager(64, 4))
    seqs = [_seq(f"r{i}", 3, 4) for i in range(5)]
    steps = _drive(sched, seqs)
    assert max(len(s.scheduled) for s in steps) == 2
    # First step admits the first two in arrival order; the rest wait.
    assert [s.request_id for s, _ in steps[0].scheduled] == ["r0", "r1"]
    assert all(s.num_output_tokens == 4 and s.is_finished for s in seqs)
    assert sched.block_manager.num_free_blocks == 64


def test_token_budget_chunks_long_prompt_and_mixes_decodes():
    sched = Scheduler(_limits(max_num_seqs=8, max_num_batched_tokens=5, max_model_len=64), BlockManager(64, 4))
    short, long = _seq("short", 2, 6), _seq("long", 13, 2)
    log: list = []
    steps = _drive(sched, [short, long], log=log)
    for step in steps:
        assert step.num_batched_tokens <= 5
    # The long prompt is prefilled in consecutive chunks that together cover it exactly.
    chunks = [(start, n) for entries in log for rid, start, n in entries if rid == "long" and start < 13]
    assert len(chunks) >= 3
    covered = 0
    for start, n in chunks:
        assert start == covered
        covered += n
    assert covered == 13
    # A step mixes short's decode (1 token) with a chunk of long's prefill: one packed batch.
    mixed = [
        entries
        for entries in log
        if any(r == "short" and n == 1 for r, _, n in entries) and any(r == "long" and st < 13 for r, st, _ in entries)
    ]
    assert mixed
    assert short.num_output_tokens == 6 and long.num_output_tokens == 2


def test_preemption_by_recompute_when_blocks_run_out():
    # 6 blocks of 4 tokens; three sequences that grow to 14 tokens each cannot all stay resident.
    sched = Scheduler(_limits(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=32), BlockManager(6, 4))
    seqs = [_seq(f"r{i}", 4, 10) for i in range(3)]
    steps = _drive(sched, seqs)
    preempted = [s for step in steps for s in step.preempted]
    assert preempted, "expected at least one preemption"
    # The victim is the most recently admitted running sequence, never the oldest.
    assert seqs[0] not in preempted
    assert all(s.is_finished and s.num_output_tokens == 10 for s in seqs)
    assert sum(s.metrics.num_preemptions for s in seqs) == len(preempted)
    assert sched.block_manager.num_free_blocks == 6


def test_preempted_sequence_recomputes_prompt_and_outputs():
    sched = Scheduler(_limits(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=32), BlockManager(4, 4))
    a, b = _seq("a", 4, 8), _seq("b", 4, 8)
    steps = _drive(sched, [a, b])
    # After preemption b comes back with all its tokens (prompt + outputs so far) to recompute in one go.
    for i, step in enumerate(steps):
        if b in step.preempted:
            later = next(n for st in steps[i + 1 :] for s, n in st.scheduled if s is b)
            assert later > 1
            break
    else:
        pytest.fail("b was never preempted")


def test_check_fits():
    sched = Scheduler(_limits(max_num_seqs=2, max_num_batched_tokens=8, max_model_len=16), BlockManager(8, 4))
    assert sched.check_fits(16) is None
    assert "max_model_len" in sched.check_fits(17)


def test_config_validates():
    with pytest.raises(UsageError):
        _limits(max_num_seqs=0, max_num_batched_tokens=8, max_model_len=16)
