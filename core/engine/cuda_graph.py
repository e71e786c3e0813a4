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

from llmctl.core.engine.config import EngineConfig
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
    """Views of one bucket's inputs (_bucket_specs) in the shared host buffers and device buffer of int32 words.

    host_views[i] = (ids, positions, slots, seq_lens, block_tables) numpy views into host buffer i.
    """

    def __init__(
        self, size: int, width: int, hosts: list[torch.Tensor], dev: torch.Tensor, query_start_loc: torch.Tensor
    ):
        b = size
        self.size = size
        specs = _bucket_specs(b, width)
        offsets, self.used = word_layout(specs)
        self.host_views = [word_views(host.numpy(), specs, offsets) for host in hosts]
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

    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor], config: EngineConfig):
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = config.block_size
        self.device = config.device
        self.sizes = graph_batch_sizes(config.max_num_seqs)
        self.max_batch = self.sizes[-1]
        self.width = -(-config.max_model_len // config.block_size)
        words = word_layout(_bucket_specs(self.max_batch, self.width))[1]  # the largest bucket's layout holds all
        on_cuda = self.device.type == "cuda"
        # Two pinned host buffers used in turn: with overlapped steps (async scheduling) the host fills step n + 1
        # while step n's copy may still be queued; a buffer is reused only after its previous copy ran.
        self._hosts = [torch.zeros(words, dtype=torch.int32, pin_memory=on_cuda) for _ in range(2 if on_cuda else 1)]
        self._dev = torch.zeros(words, dtype=torch.int32, device=self.device) if on_cuda else self._hosts[0]
        self._copied: list[torch.cuda.Event | None] = [None] * len(self._hosts)
        self._turn = 0
        qsl = torch.arange(self.max_batch + 1, dtype=torch.int32, device=self.device)
        self._buckets = {b: _Bucket(b, self.width, self._hosts, self._dev, qsl) for b in self.sizes}
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

    def _fill(self, bucket: _Bucket, seqs, input_ids: torch.Tensor | None = None) -> None:
        """Write the step's inputs into a host buffer (padding rows: token 0, slot -1, length 0), then copy once.

        With `input_ids` (a device tensor, one id per sequence: tokens sampled by a step still in flight) the ids
        are copied on the device after the host buffer's copy, and the sequences' own token lists are not read.
        """
        n, bs = len(seqs), self.block_size
        turn = self._turn
        self._turn = (turn + 1) % len(self._hosts)
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()  # its previous copy has run (in practice long ago)
        h_ids, h_pos, h_slots, h_lens, tables = bucket.host_views[turn]
        pos = [seq.num_computed_tokens for seq in seqs]
        if input_ids is None:
            h_ids[:n] = [seq.token_ids(p, p + 1)[0] for seq, p in zip(seqs, pos)]
        h_pos[:n] = pos
        h_slots[:n] = [seq.block_table[p // bs] * bs + p % bs for seq, p in zip(seqs, pos)]
        h_lens[:n] = [p + 1 for p in pos]
        tables.fill(0)  # the buffer is shared by all buckets: clear other layouts' words (torch references read them)
        for i, seq in enumerate(seqs):
            table = seq.block_table
            tables[i, : len(table)] = table
        h_ids[n if input_ids is None else 0 :] = 0
        h_pos[n:] = 0
        h_slots[n:] = -1
        h_lens[n:] = 0
        host = self._hosts[turn]
        if self._dev is not host:
            self._dev[: bucket.used].copy_(host[: bucket.used], non_blocking=True)
            event = self._copied[turn] = self._copied[turn] or torch.cuda.Event()
            event.record()
        if input_ids is not None:
            bucket.input_ids[:n].copy_(input_ids)

    def _forward(self, bucket: _Bucket) -> torch.Tensor:
        return self.model(bucket.input_ids, bucket.positions, ForwardContext(bucket.meta, self.kv_caches))

    def run(self, seqs, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        bucket = self._buckets[self.bucket_for(len(seqs))]
        self._fill(bucket, seqs, input_ids)
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
