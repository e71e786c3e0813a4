"""Decode steps on padded static inputs (core/engine/cuda_graph.py): same tokens as the packed path; CUDA graphs
give the same tokens and logprobs as eager mode (the CUDA tests are skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from llmctl import LLM, SamplingParams
from llmctl.core.engine.cuda_graph import graph_batch_sizes

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_bucket_sizes():
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(5) == [1, 2, 4, 5]
    assert graph_batch_sizes(8) == [1, 2, 4, 8]
    assert graph_batch_sizes(30) == [1, 2, 4, 8, 16, 24, 30]
    sizes = graph_batch_sizes(256)
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-1] == 256 and len(sizes) == 35


def _params(i: int, logprobs: int | None = None) -> SamplingParams:
    # Different lengths: sequences finish at different steps, so the decode batch shrinks through the buckets.
    return SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=6 + 3 * i, logprobs=logprobs)


def _run(llm: LLM, prompts: list[str], logprobs: int | None = None):
    outs = llm.generate(prompts, [_params(i, logprobs) for i in range(len(prompts))])
    return [o.outputs[0] for o in outs]


def test_padded_decode_matches_packed_and_transformers(tiny_llama_dir, hf_greedy, prompts):
    # 5 sequences at most (buckets 1, 2, 4, 5), a cache too small for all of them (preemption), and a token budget
    # that splits prompts into chunks, some of one token (which take the padded path too).
    options = dict(dtype="float32", device="cpu", max_num_seqs=5, max_num_batched_tokens=7, block_size=4,
                   num_kv_blocks=14, max_model_len=48)  # fmt: skip
    padded = LLM(str(tiny_llama_dir), padded_decode=True, **options)
    packed = LLM(str(tiny_llama_dir), padded_decode=False, **options)
    assert padded.llm_engine.runner.decode is not None and packed.llm_engine.runner.decode is None
    got, ref = _run(padded, prompts, logprobs=3), _run(packed, prompts, logprobs=3)
    for i, (a, b) in enumerate(zip(got, ref)):
        assert a.token_ids == b.token_ids
        assert a.token_ids == hf_greedy(padded.llm_engine.tokenizer.encode(prompts[i]), len(a.token_ids))
        for lp_a, lp_b in zip(a.logprobs, b.logprobs):
            assert lp_a.keys() == lp_b.keys()
            for tok in lp_a:
                assert lp_a[tok].logprob == pytest.approx(lp_b[tok].logprob, abs=1e-4)


def test_padding_rows_write_nothing(tiny_llama_dir, prompts):
    """A step of 3 sequences runs at bucket 4: the padding row must leave the KV cache untouched."""
    llm = LLM(str(tiny_llama_dir), dtype="float32", device="cpu", max_num_seqs=4, padded_decode=True,
              block_size=4, num_kv_blocks=32, max_model_len=32)  # fmt: skip
    runner = llm.llm_engine.runner
    llm.generate(prompts[:3], SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=1))
    before = [c.clone() for c in runner.kv_caches]
    bucket = runner.decode._buckets[4]
    runner.decode._fill(bucket, [])  # all four rows padding
    runner.decode._forward(bucket)
    for b, a in zip(before, runner.kv_caches):
        assert torch.equal(a, b)
    assert bucket.meta.slot_mapping.tolist() == [-1] * 4 and bucket.meta.seq_lens.tolist() == [0] * 4


@needs_cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cuda_graphs_match_eager(tiny_llama_dir, dtype, prompts):
    options = dict(dtype=dtype, device="cuda", max_num_seqs=5, max_model_len=64, gpu_memory_utilization=0.2)
    graphs = LLM(str(tiny_llama_dir), **options)
    eager = LLM(str(tiny_llama_dir), enforce_eager=True, **options)
    decode = graphs.llm_engine.runner.decode
    assert decode.graph_sizes == [1, 2, 4, 5] and graphs.llm_engine.cuda_graph_capture_seconds > 0
    assert eager.llm_engine.runner.decode.graph_sizes == [] and eager.llm_engine.cuda_graph_capture_seconds is None
    got, ref = _run(graphs, prompts, logprobs=5), _run(eager, prompts, logprobs=5)
    for a, b in zip(got, ref):
        assert a.token_ids == b.token_ids
        assert [{t: lp.logprob for t, lp in d.items()} for d in a.logprobs] == [
            {t: lp.logprob for t, lp in d.items()} for d in b.logprobs
        ]
    del graphs, eager
    torch.cuda.empty_cache()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_staging_packs_step_inputs_into_one_buffer(device):
    """The packed batch's integer inputs travel in one buffer: every view reads back what was sent."""
    import numpy as np

    from llmctl.core.engine.staging import Staging

    staging = Staging(torch.device(device), packed=True)
    rng = np.random.default_rng(0)
    for size in (3, 5000, 7):  # grows once, then reuses the larger buffers
        a64 = [rng.integers(-(2**40), 2**40, size), rng.integers(0, 9, size)]
        a32 = [rng.integers(-100, 100, size + 1).astype(np.int32), rng.integers(0, 50, (2, size)).astype(np.int32)]
        got = staging.send(a64, a32)
        for g, want, dtype in zip(got, a64 + a32, [torch.int64] * 2 + [torch.int32] * 2):
            assert g.dtype == dtype and tuple(g.shape) == want.shape and g.device.type == device
            assert g.cpu().numpy().tolist() == want.tolist()
    assert max(h.numel() for h in staging.hosts) >= 2 * 2 * 5000 + 5001 + 10000
