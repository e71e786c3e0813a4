"""Runs one scheduled step: packs tokens, builds attention metadata, calls the model, gathers the logits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmctl.core.engine.config import EngineConfig
from llmctl.core.engine.cuda_graph import DecodeRunner
from llmctl.core.engine.sampler import Sampler
from llmctl.core.engine.staging import Staging, host_to_device
from llmctl.core.engine.sequence import Sequence
from llmctl.model_defs.layers.context import AttentionMetadata, ForwardContext


PROMPT_LOGITS_ROWS = 2048  # prompt positions whose logits (and logprobs) are computed at once


@dataclass
class StepOutput:
    """What one step produced.

    sample_seqs[i] got token_ids[i] (with logprobs[i], {token: (logprob, rank)}, when it asked);
    prompt_logprobs maps id(seq) to the logprob dicts of the prompt tokens this step covered, in order.
    """

    sample_seqs: list[Sequence]
    token_ids: list[int]
    logprobs: list[dict[int, tuple[float, int]] | None]
    prompt_logprobs: dict[int, list[dict[int, tuple[float, int]]]]


class InflightStep:
    """A decode step launched without waiting for it: its sampled tokens arrive in a pinned host buffer.

    `tokens` (on the device) can feed the next step's input ids before the host has read them. On CUDA the copy to
    the host runs on a side stream: the next step's inputs and kernels queue behind the sampling, not behind the copy.
    """

    def __init__(self, seqs: list[Sequence], tokens: torch.Tensor):
        self.seqs = seqs
        self.tokens = tokens
        if tokens.device.type == "cuda":
            self._host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            copier = _copy_stream(tokens.device)
            copier.wait_stream(torch.cuda.current_stream(tokens.device))  # the tokens are sampled
            with torch.cuda.stream(copier):
                self._host.copy_(tokens, non_blocking=True)
                self._ready = torch.cuda.Event()
                self._ready.record(copier)
            tokens.record_stream(copier)  # the allocator keeps the tokens until the copy ran
        else:
            self._host, self._ready = tokens, None

    def token_ids(self) -> list[int]:
        """Wait for the step, then its token per sequence."""
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.tolist()


_COPY_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for sampled tokens' copies to the host."""
    stream = _COPY_STREAMS.get(device)
    if stream is None:
        stream = _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return stream


@dataclass
class PackedBatch:
    """Model inputs of one step, on the device."""

    input_ids: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64
    attn_metadata: AttentionMetadata


class ModelRunner:
    """Owns the model and its KV cache; device-agnostic (plain torch on CPU and CUDA alike).

    Steps that schedule one token per sequence go through a DecodeRunner (static inputs padded to bucket sizes,
    replayed as CUDA graphs once its `capture` ran) when the resolved config's `padded_decode` is on; other steps
    are packed without padding and run eagerly.
    """

    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor], config: EngineConfig, sampler: Sampler):
        self.model = model
        self.sampler = sampler
        self.kv_caches = kv_caches
        self.block_size = config.block_size
        self.device = config.device
        self._staging = Staging(self.device)
        self.decode = DecodeRunner(model, kv_caches, config) if config.padded_decode else None

    def prepare(self, scheduled: list[tuple[Sequence, int]]) -> PackedBatch:
        """Pack the new tokens of every scheduled sequence, with no padding, and their cache slots."""
        bs = self.block_size
        num_tokens = sum(n for _, n in scheduled)
        input_ids = np.empty(num_tokens, dtype=np.int64)
        positions = np.empty(num_tokens, dtype=np.int64)
        slots = np.empty(num_tokens, dtype=np.int64)
        query_start_loc = np.zeros(len(scheduled) + 1, dtype=np.int32)
        seq_lens = np.empty(len(scheduled), dtype=np.int32)
        tables = np.zeros((len(scheduled), max(len(seq.block_table) for seq, _ in scheduled)), dtype=np.int32)
        offset = 0
        for i, (seq, n) in enumerate(scheduled):
            start = seq.num_computed_tokens
            end = start + n
            table = seq.block_table
            tables[i, : len(table)] = table
            input_ids[offset : offset + n] = seq.token_ids(start, end)
            pos = np.arange(start, end)
            positions[offset : offset + n] = pos
            slots[offset : offset + n] = tables[i, pos // bs].astype(np.int64) * bs + pos % bs
            offset += n
            query_start_loc[i + 1] = offset
            seq_lens[i] = end
        ids_t, pos_t, slots_t, qsl_t, lens_t, tables_t = self._staging.send(
            [input_ids, positions, slots], [query_start_loc, seq_lens, tables]
        )
        meta = AttentionMetadata(
            query_start_loc=qsl_t,
            seq_lens=lens_t,
            slot_mapping=slots_t,
            block_tables=tables_t,  # (B, max_blocks)
            max_query_len=max(n for _, n in scheduled),
            max_seq_len=int(seq_lens.max()),
        )
        return PackedBatch(input_ids=ids_t, positions=pos_t, attn_metadata=meta)

    def can_launch(self, seqs: list[Sequence]) -> bool:
        """Whether launch_decode can run these sequences: a padded decode batch whose sampling needs no read-back."""
        return (self.decode is not None and 0 < len(seqs) <= self.decode.max_batch
                and all(self.sampler.overlappable(seq.sampling_state) for seq in seqs))

    @torch.inference_mode()
    def launch_decode(self, seqs: list[Sequence], previous: InflightStep | None = None) -> InflightStep:
        """Queue a decode step of one token per sequence, and its sampling, without waiting for the device.

        With `previous`, the tokens it sampled (not yet appended to the sequences) are this step's inputs:
        seqs must be a subset of previous.seqs, in the same order, each with num_computed_tokens already counting
        the position of that pending token. The caller advances num_computed_tokens after the launch.
        """
        input_ids = None
        if previous is not None:
            if len(seqs) == len(previous.seqs):
                input_ids = previous.tokens
            else:
                keep = {id(seq) for seq in seqs}
                rows = [i for i, seq in enumerate(previous.seqs) if id(seq) in keep]
                input_ids = previous.tokens[host_to_device(rows, previous.tokens.device)]
        hidden = self.decode.run(seqs, input_ids)
        logits = self.model.compute_logits(hidden)  # (B, V) in the model's dtype, ours to mask
        states = [seq.sampling_state for seq in seqs]
        tokens = self.sampler.sample_tokens(logits, states, pending=0 if previous is None else 1, owned=True)
        return InflightStep(seqs, tokens)

    @torch.inference_mode()
    def execute(self, scheduled: list[tuple[Sequence, int]]) -> StepOutput:
        """Run the model over the packed batch, then sample every sequence that caught up.

        A sequence samples when this step brings its cache up to all of its tokens (the last chunk of a
        prefill, or a decode), from the logits of its last scheduled token. Prompt logprobs come from
        the logits at the prompt positions of this step, for the requests that asked.
        """
        if self.decode is not None and len(scheduled) <= self.decode.max_batch and all(n == 1 for _, n in scheduled):
            hidden = self.decode.run([seq for seq, _ in scheduled])  # (B, H): one row per sequence
        else:
            batch = self.prepare(scheduled)
            ctx = ForwardContext(batch.attn_metadata, self.kv_caches)
            hidden = self.model(batch.input_ids, batch.positions, ctx)  # (T, H)

        sample_seqs: list[Sequence] = []
        sample_rows: list[int] = []
        prompt_rows: list[int] = []
        prompt_spans: list[tuple[Sequence, range, int]] = []
        offset = 0
        for seq, n in scheduled:
            start = seq.num_computed_tokens
            if start + n == seq.num_tokens:
                sample_seqs.append(seq)
                sample_rows.append(offset + n - 1)
            pending = seq.prompt_logprobs_pending(start, start + n)
            if len(pending):
                prompt_spans.append((seq, pending, len(prompt_rows)))
                prompt_rows.extend(offset + p - start for p in pending)
            offset += n

        out = StepOutput(sample_seqs, [], [], {})
        if sample_rows:
            logits = self._logits(hidden, sample_rows)  # (len(sample_rows), V)
            sampled = self.sampler.sample(logits, [seq.sampling_state for seq in sample_seqs])
            out.token_ids = sampled.token_ids
            out.logprobs = sampled.logprobs
        for seq, pending, first in prompt_spans:
            # In slices: a whole chunk's logits at once are chunk x vocab floats (8,192 x 128,256: 4 GiB, as much again
            # for their log-softmax; past 2^31 elements from 16,744 rows), never counted in the memory profile.
            entries = []
            for lo in range(0, len(pending), PROMPT_LOGITS_ROWS):
                part = pending[lo : lo + PROMPT_LOGITS_ROWS]
                rows_lp = self._logits(hidden, prompt_rows[first + lo : first + lo + len(part)])  # row j: token p0+j+1
                tokens = seq.prompt_token_ids[part.start : part.stop + 1]
                entries += self.sampler.prompt_logprobs(rows_lp, tokens, seq.params.prompt_logprobs)[1:]
            out.prompt_logprobs[id(seq)] = entries
        return out

    def _logits(self, hidden: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Float32 logits (len(rows), V) of the given rows of hidden (T, H)."""
        if rows[-1] == len(rows) - 1 and rows == list(range(len(rows))):  # decode: every row, in order
            picked = hidden[: len(rows)]
        else:
            picked = hidden[host_to_device(rows, hidden.device)]  # pinned, non-blocking: no stream sync
        return self.model.compute_logits(picked).float()
