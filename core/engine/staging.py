"""Step inputs to the device without waiting for it: integer arrays laid out in one int32 buffer (one copy), and
small index lists through pinned memory."""

from __future__ import annotations

import math

import numpy as np
import torch

Spec = tuple[tuple[int, ...], torch.dtype]  # (shape, torch.int64 | torch.int32)


def word_layout(specs: list[Spec]) -> tuple[list[int], int]:
    """(offset of each array, words in all) for arrays laid one after another in int32 words.

    An int64 array takes two words per element and starts on an even word, so that its view is aligned.
    """
    offsets, words = [], 0
    for shape, dtype in specs:
        if dtype == torch.int64:
            words += words % 2
        offsets.append(words)
        words += math.prod(shape) * (2 if dtype == torch.int64 else 1)
    return offsets, words


def word_views(buffer: np.ndarray | torch.Tensor, specs: list[Spec], offsets: list[int]) -> list:
    """The arrays of word_layout as views into an int32 `buffer` (numpy on the host, torch on either side)."""
    numpy = isinstance(buffer, np.ndarray)
    views = []
    for (shape, dtype), offset in zip(specs, offsets):
        wide = dtype == torch.int64
        flat = buffer[offset : offset + math.prod(shape) * (2 if wide else 1)]
        if wide:
            flat = flat.view(np.int64 if numpy else torch.int64)
        views.append(flat.reshape(shape))
    return views


def host_to_device(data: list, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A tensor of `data` on `device`; on CUDA through pinned memory, so the host does not wait for the GPU."""
    if device.type != "cuda":
        return torch.tensor(data, dtype=dtype)
    return torch.tensor(data, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


class Staging:
    """Integer step inputs to the device in one copy, through buffers kept from step to step.

    On CUDA two pinned host buffers of int32 words, used in turn, and one device buffer (all grown on demand;
    allocating pinned memory for every step can cost milliseconds); int64 arrays take two words each. The returned
    tensors are views into the device buffer, valid until the next send (the next copy into it queues behind the
    kernels that read them). The host does not wait for the GPU between steps that sample nothing (the chunks of
    a long prompt), so a step's copy may still be queued behind earlier steps' kernels when the host stages the
    next one: a host buffer is rewritten only after its previous copy ran (an event per buffer). Reusing it
    sooner sent a later step's indices to an earlier step: prompts of three or more chunks read out of bounds.
    On the CPU each array becomes its own tensor.
    """

    def __init__(self, device: torch.device, packed: bool | None = None):
        self.device = device
        self.packed = device.type == "cuda" if packed is None else packed  # packed=True on a CPU: tests
        self.hosts = [torch.empty(0, dtype=torch.int32), torch.empty(0, dtype=torch.int32)]
        self.copied: list = [None, None]  # per host buffer: an event recorded after its last copy, or None
        self.turn = 0
        self.dev = self.hosts[0]

    def send(self, int64_arrays: list[np.ndarray], int32_arrays: list[np.ndarray]) -> list[torch.Tensor]:
        if not self.packed:
            return [torch.from_numpy(a) for a in int64_arrays + int32_arrays]
        arrays = int64_arrays + int32_arrays
        specs = [(a.shape, torch.int64) for a in int64_arrays] + [(a.shape, torch.int32) for a in int32_arrays]
        offsets, words = word_layout(specs)
        i, self.turn = self.turn, 1 - self.turn
        if self.copied[i] is not None:
            self.copied[i].synchronize()  # this buffer's previous copy has run: it may be rewritten
        if words > self.hosts[i].numel():
            self.hosts[i] = torch.empty(_capacity(words), dtype=torch.int32, pin_memory=self.device.type == "cuda")
        if words > self.dev.numel():
            self.dev = torch.empty(_capacity(words), dtype=torch.int32, device=self.device)
        host = self.hosts[i]
        for dest, a in zip(word_views(host.numpy(), specs, offsets), arrays):
            dest[...] = a
        self.copied[i] = self.copy(self.dev[:words], host[:words], self.copied[i])
        return word_views(self.dev, specs, offsets)

    def copy(self, dest: torch.Tensor, src: torch.Tensor, done):
        """Queue dest <- src; return an event whose synchronize() waits until the copy ran (None: it has run).

        `done` is the buffer's event from its last copy (None the first time): recorded again, not made anew.
        """
        dest.copy_(src, non_blocking=True)
        if dest.device.type != "cuda":
            return None
        done = done or torch.cuda.Event()
        done.record()
        return done


def _capacity(words: int) -> int:
    return 1 << max(12, (words - 1).bit_length())
