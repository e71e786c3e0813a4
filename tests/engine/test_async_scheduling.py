"""Overlapped decode steps (LLMEngine async_scheduling): the same results as stepping synchronously, with requests
that stop on tokens (their extra in-flight step dropped), seeded sampling, min_tokens, a queue and aborts."""

from __future__ import annotations

import pytest
import torch

from llmctl import LLM, SamplingParams

OPTIONS = dict(max_num_seqs=4, block_size=4, num_kv_blocks=64, max_model_len=48, padded_decode=True)
# float32 on CUDA too: a request that stops on a token keeps one dropped row in the next (already queued) step, so
# the two modes can run a step at different batch sizes, whose kernels (GEMV or cuBLAS) round differently in bf16.
DEVICES = [("cpu", "float32"), pytest.param(("cuda", "float32"), marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]  # fmt: skip


def _llm(tiny_llama_dir, overlap: bool, device: str = "cpu", dtype: str = "float32") -> LLM:
    llm = LLM(str(tiny_llama_dir), async_scheduling=overlap, device=device, dtype=dtype, **OPTIONS)
    assert llm.llm_engine.async_scheduling is overlap
    return llm


def _count_overlapped(llm: LLM) -> list[int]:
    """Counts launches fed by an in-flight step's tokens (the overlapped ones) in calls[0]."""
    runner = llm.llm_engine.runner
    launch = runner.launch_decode
    calls = [0]

    def counting(seqs, previous=None):
        calls[0] += previous is not None
        return launch(seqs, previous)

    runner.launch_decode = counting
    return calls


def _params(n: int, stop_tokens: dict[int, int]) -> list[SamplingParams]:
    params = []
    for i in range(n):
        common = dict(max_tokens=5 + 3 * i, stop_token_ids=[stop_tokens[i]] if i in stop_tokens else None)
        if i % 3 == 2:  # seeded sampling: the same draws whatever the batch
            params.append(SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=100 + i, **common))
        else:
            params.append(SamplingParams(temperature=0.0, min_tokens=2 if i == 1 else 0, **common))
    return params


@pytest.mark.parametrize("device_dtype", DEVICES)
def test_overlapped_steps_match_synchronous(tiny_llama_dir, device_dtype, prompts):
    # On CUDA both sides replay the same CUDA graphs; only the order of host and device work differs.
    sync, overlapped = _llm(tiny_llama_dir, False, *device_dtype), _llm(tiny_llama_dir, True, *device_dtype)
    # Stop tokens taken from a first synchronous run, so that some requests stop early on a sampled token.
    first = sync.generate(prompts, _params(len(prompts), {}))
    stops = {i: first[i].outputs[0].token_ids[2] for i in (0, 3, 4)}
    calls = _count_overlapped(overlapped)
    want = sync.generate(prompts, _params(len(prompts), stops))
    got = overlapped.generate(prompts, _params(len(prompts), stops))
    assert calls[0] > 10  # most decode steps were queued before the previous step's tokens were read
    for a, b in zip(got, want):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.outputs[0].finish_reason == b.outputs[0].finish_reason
        assert a.outputs[0].text == b.outputs[0].text
    assert any(want[i].outputs[0].finish_reason == "stop" for i in stops)
    # Every request finished and released its blocks, including the dropped in-flight steps' growth.
    engine = overlapped.llm_engine
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_abort_while_a_step_is_in_flight(tiny_llama_dir, prompts):
    sync, overlapped = _llm(tiny_llama_dir, False), _llm(tiny_llama_dir, True)
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=12)
    want = {o.prompt: o.outputs[0].token_ids for o in sync.generate(prompts[:3], params)}
    engine = overlapped.llm_engine
    ids = []
    for prompt in prompts[:3]:
        ids.append(engine.next_request_id())
        engine.add_request(ids[-1], params, prompt=prompt)
    done = {}
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        steps += 1
        if steps == 4:
            assert engine._inflight is not None
            engine.abort_request(ids[1])
    assert ids[1] not in done
    for rid, prompt in ((ids[0], prompts[0]), (ids[2], prompts[2])):
        assert done[rid].outputs[0].token_ids == want[prompt]
    # The engine takes new work after the stale in-flight step.
    again = overlapped.generate(prompts[:3], params)
    assert [o.outputs[0].token_ids for o in again] == [want[p] for p in prompts[:3]]
