"""Decode steps on static, padded inputs: one CUDA graph per batch-size bucket, captured at start-up, replayed per step.

A decode step (one new token per sequence) of n sequences runs at the smallest bucket size >= n, its inputs written
into fixed buffers whose padding rows do nothing (slot -1: no cache write; context length 0: no attention). All of a
bucket's inputs live in one int32 buffer, so a step costs one host-to-device copy; the graph captured for the
bucket reads them where they lie. Without graphs (enforce_eager, or a CPU) the same padded forward runs eagerly, so
both modes compute exactly the same kernels on the same shapes and give the same tokens.
"""

from __future__ import annotations

import time

import torch

from llmctl.core.engine.staging import word_layout, word_views
from llmctl.model_defs.layers.context import AttentionMetadata, ForwardContext


MAX_GRAPH_BATCH = 512  # larger decode batches are compute-bound: they run eagerly, packed, without graphs


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """Bucket sizes: 1, 2, 4, then every multiple of 8, and the largest, min(max_num_seqs, MAX_GRAPH_BATCH)."""
    top = min(max_num_seqs, MAX_GRAPH_BATCH)
    sizes = {b for b in (1, 2, 4) if b <= top} | set(range(8, top + 1, 8)) | {top}
    return sorted(sizes)


def _bucket_specs(b: int, width: int) -> list:
    """input_ids, positions, slot_mapping int64 (b,); seq_lens int32 (b,); block_tables int32 (b, width)."""
    return [((b,), torch.int64)] * 3 + [((b,), torch.int32), ((b, width), torch.int32)]


class _Bucket:
    """Views of one bucket's inputs (_bucket_specs) in the shared host and device buffers of int32 words."""

    def __init__(self, size: int, width: int, host: torch.Tensor, dev: torch.Tensor, query_start_loc: torch.Tensor):
        b = size
        self.size = size
        specs = _bucket_specs(b, width)
        offsets, self.used = word_layout(specs)
        self.h_ids, self.h_pos, self.h_slots, self.h_lens, self.h_tables = word_views(host.numpy(), specs, offsets)
        self.input_ids, self.positions, slot_mapping, seq_lens, block_tables = word_views(dev, specs, offsets)
        self.meta = AttentionMetadata(
            query_start_loc=query_start_loc[: b + 1],
            seq_lens=seq_lens,
            slot_mapping=slot_mapping,
            block_tables=block_tables,
            max_query_len=1,
            max_seq_len=width,  # an upper bound in blocks' worth; nothing reads it on this path
        )


class DecodeRunner:
    """Runs decode steps of up to max_num_seqs sequences at bucketed batch sizes, through CUDA graphs when captured.

    `run(seqs)` takes sequences that each have exactly one token scheduled (the one at num_computed_tokens: the last
    token for a decode, or a one-token prefill chunk) and returns the hidden states (len(seqs), H) of those tokens;
    the rows stay valid until the next call.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        max_model_len: int,
        max_num_seqs: int,
        device: torch.device,
    ):
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = torch.device(device)
        self.sizes = graph_batch_sizes(max_num_seqs)
        self.max_batch = self.sizes[-1]
        self.width = -(-max_model_len // block_size)
        words = word_layout(_bucket_specs(self.max_batch, self.width))[1]  # the largest bucket's layout holds all
        on_cuda = self.device.type == "cuda"
        self._host = torch.zeros(words, dtype=torch.int32, pin_memory=on_cuda)
        self._dev = torch.zeros(words, dtype=torch.int32, device=self.device) if on_cuda else self._host
        qsl = torch.arange(self.max_batch + 1, dtype=torch.int32, device=self.device)
        self._buckets = {b: _Bucket(b, self.width, self._host, self._dev, qsl) for b in self.sizes}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        self.capture_seconds: float | None = None

    def bucket_for(self, n: int) -> int:
        for b in self.sizes:
            if b >= n:
                return b
        raise ValueError(f"{n} sequences are more than the largest decode batch ({self.max_batch})")

    @property
    def graph_sizes(self) -> list[int]:
        return sorted(self._graphs)

    def _fill(self, bucket: _Bucket, seqs) -> None:
        """Write the step's inputs into the host buffer (padding rows: token 0, slot -1, length 0), then copy once."""
        n, bs = len(seqs), self.block_size
        pos = [seq.num_computed_tokens for seq in seqs]
        bucket.h_ids[:n] = [seq.token_ids(p, p + 1)[0] for seq, p in zip(seqs, pos)]
        bucket.h_pos[:n] = pos
        bucket.h_slots[:n] = [seq.block_table[p // bs] * bs + p % bs for seq, p in zip(seqs, pos)]
        bucket.h_lens[:n] = [p + 1 for p in pos]
        tables = bucket.h_tables
        tables.fill(0)  # the buffer is shared by all buckets: clear other layouts' words (torch references read them)
        for i, seq in enumerate(seqs):
            table = seq.block_table
            tables[i, : len(table)] = table
        if n < bucket.size:
            bucket.h_ids[n:] = 0
            bucket.h_pos[n:] = 0
            bucket.h_slots[n:] = -1
            bucket.h_lens[n:] = 0
        if self._dev is not self._host:
            self._dev[: bucket.used].copy_(self._host[: bucket.used], non_blocking=True)

    def _forward(self, bucket: _Bucket) -> torch.Tensor:
        return self.model(bucket.input_ids, bucket.positions, ForwardContext(bucket.meta, self.kv_caches))

    def run(self, seqs) -> torch.Tensor:
        bucket = self._buckets[self.bucket_for(len(seqs))]
        self._fill(bucket, seqs)
        graph = self._graphs.get(bucket.size)
        if graph is None:
            return self._forward(bucket)[: len(seqs)]
        graph.replay()
        return self._outputs[bucket.size][: len(seqs)]

    @torch.inference_mode()
    def capture(self) -> float:
        """Capture one graph per bucket, largest first, all in one memory pool; returns the seconds it took."""
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        t0 = time.perf_counter()
        pool = None
        for size in reversed(self.sizes):
            bucket = self._buckets[size]
            self._fill(bucket, [])  # all padding: the captured kernels read the real inputs at replay
            self._forward(bucket)  # warm-up outside the graph: Triton compiles, cuBLAS picks its kernels
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._forward(bucket)
            if pool is None:
                pool = graph.pool()
            self._graphs[size] = graph
            self._outputs[size] = out
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - t0
        return self.capture_seconds
