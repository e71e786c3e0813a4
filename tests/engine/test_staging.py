"""Staging of packed step inputs: one buffer per copy, never refilled while a queued copy still has to read it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmctl.core.engine.staging import Staging

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _step(rng, num_tokens: int, width: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A packed step's arrays as ModelRunner.prepare lays them out: ids, positions, slots; qsl, seq_lens, tables."""
    a64 = [rng.integers(0, 1000, num_tokens), rng.integers(0, 1 << 20, num_tokens),
           rng.integers(0, 1 << 40, num_tokens)]
    a32 = [np.array([0, num_tokens], dtype=np.int32), np.array([num_tokens], dtype=np.int32),
           rng.integers(0, 5000, (1, width)).astype(np.int32)]
    return a64, a32


class _Stream:
    """A device stream that lags behind the host, as a GPU busy with earlier kernels does: work queues and runs only
    when the host waits for an event recorded after it (or at drain)."""

    def __init__(self):
        self.queue: list = []

    def enqueue(self, work) -> "_Event":
        self.queue.append(work)
        return _Event(self, work)

    def run_until(self, work) -> None:
        while self.queue:
            done = self.queue.pop(0)
            done()
            if done is work:
                return

    def drain(self) -> None:
        self.run_until(None)


class _Event:
    def __init__(self, stream: _Stream, work):
        self.stream, self.work = stream, work

    def synchronize(self) -> None:
        if self.work in self.stream.queue:
            self.stream.run_until(self.work)


class _LaggingStaging(Staging):
    """Staging on the CPU whose host-to-device copies queue on a lagging _Stream instead of running at once."""

    def __init__(self, stream: _Stream):
        super().__init__(torch.device("cpu"), packed=True)
        self.stream = stream

    def _copy(self, dev, host, event):
        return self.stream.enqueue(lambda: dev.copy_(host))


def test_a_queued_copy_reads_its_own_step_even_when_the_host_runs_ahead():
    """Prefill chunks that sample nothing do not wait for the device: the host fills step n + 1 while step n's copy
    is still queued behind step n - 1's kernels. Each step's kernels must still see that step's inputs (the engine
    crashed with an illegal memory access on single prompts of three or more chunks when they did not)."""
    rng = np.random.default_rng(0)
    stream = _Stream()
    staging = _LaggingStaging(stream)
    steps = [_step(rng, n, w) for n, w in ((8192, 512), (8192, 1024), (3616, 1250), (1, 1250), (5000, 1300))]
    seen: list = []
    for a64, a32 in steps:
        views = staging.send(a64, a32)
        stream.enqueue(lambda v=views: seen.append([t.clone() for t in v]))  # the step's kernels read its inputs
    stream.drain()
    assert len(seen) == len(steps)
    for got, (a64, a32) in zip(seen, steps):
        for g, want in zip(got, a64 + a32):
            assert g.numpy().tolist() == want.tolist()


def test_staging_grows_for_a_larger_step_and_keeps_every_array():
    rng = np.random.default_rng(1)
    staging = Staging(torch.device("cpu"), packed=True)
    for n, w in ((3, 1), (20_000, 1250), (7, 2)):
        a64, a32 = _step(rng, n, w)
        for g, want in zip(staging.send(a64, a32), a64 + a32):
            assert g.numpy().tolist() == want.tolist()


@needs_cuda
def test_cuda_staging_survives_a_host_running_ahead_of_the_device():
    """The same race on a real stream: a long kernel keeps the device busy while the host sends three steps."""
    rng = np.random.default_rng(2)
    staging = Staging(torch.device("cuda"))
    steps = [_step(rng, n, w) for n, w in ((4096, 256), (4096, 512), (1000, 600), (3, 600))]
    staging.send(*_step(rng, 8, 8))  # allocate the buffers
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time: every copy below queues behind it
    seen = []
    for a64, a32 in steps:
        views = staging.send(a64, a32)
        seen.append([t.clone() for t in views])  # queued right after the step's copy, as its kernels would be
    torch.cuda.synchronize()
    for got, (a64, a32) in zip(seen, steps):
        for g, want in zip(got, a64 + a32):
            assert g.cpu().numpy().tolist() == want.tolist()
