"""Staging never rewrites a host buffer whose copy to the device has not run yet.

Steps that sample nothing (the chunks of a long prompt) do not wait for the GPU, so the host stages step n+1
and n+2 while step n still runs. A copy queued behind step n's kernels must still carry step n+1's inputs when
it runs. The CPU test plays the stream with a queue: copies and the kernels that read their output run only
when something waits on an event, in the order they were queued, as on a busy GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmctl.core.engine.staging import Staging

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class _Stream:
    """Work queued in order and run only when an event recorded after it is waited on."""

    def __init__(self):
        self.queue: list = []

    def enqueue(self, work):
        self.queue.append(work)

    def event(self):
        stream, mark = self, len(self.queue)

        class Event:
            def synchronize(self):
                stream.run(mark)

        return Event()

    def run(self, upto: int | None = None):
        upto = len(self.queue) if upto is None else upto
        for i, work in enumerate(self.queue[:upto]):
            if work is not None:
                work()
                self.queue[i] = None


class _QueuedStaging(Staging):
    def __init__(self, stream: _Stream):
        super().__init__(torch.device("cpu"), packed=True)
        self.stream = stream

    def copy(self, dest, src, done):
        self.stream.enqueue(lambda: dest.copy_(src))
        return self.stream.event()


def _steps(rng, sizes):
    for size in sizes:
        yield [rng.integers(0, 2**40, size)], [rng.integers(0, 2**20, (2, size)).astype(np.int32)]


@pytest.mark.parametrize("sizes", [(8192, 8192, 3616), (64, 64, 64, 64, 64), (5, 4000, 7, 4000, 3)])
def test_a_queued_copy_carries_its_own_step(sizes):
    stream = _Stream()
    staging = _QueuedStaging(stream)
    seen: list = []
    sent = list(_steps(np.random.default_rng(len(sizes)), sizes))
    for a64, a32 in sent:
        views = staging.send(a64, a32)
        # The step's "kernels": read the views when the stream gets to them.
        stream.enqueue(lambda views=views: seen.append([v.clone() for v in views]))
    stream.run()
    assert len(seen) == len(sent)
    for got, (a64, a32) in zip(seen, sent):
        for g, want in zip(got, a64 + a32):
            assert g.numpy().tolist() == want.tolist()


@needs_cuda
def test_steps_staged_behind_a_busy_gpu_read_their_own_inputs():
    """On a GPU kept busy, three sends queue behind it; each step's clone must see what that step sent."""
    staging = Staging(torch.device("cuda"))
    rng = np.random.default_rng(0)
    sent = list(_steps(rng, (8192, 8192, 3616, 100)))
    seen = []
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time before the first copy can run
    for a64, a32 in sent:
        views = staging.send(a64, a32)
        seen.append([v.clone() for v in views])
    torch.cuda.synchronize()
    for got, (a64, a32) in zip(seen, sent):
        for g, want in zip(got, a64 + a32):
            assert g.cpu().numpy().tolist() == want.tolist()
