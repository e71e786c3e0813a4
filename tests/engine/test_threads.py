"""One LLM used from several threads at once: every call gets its own complete results, and nothing hangs."""

from __future__ import annotations

import threading

import pytest

from llmctl import LLM, SamplingParams

GREEDY = dict(temperature=0.0, ignore_eos=True)
TIMEOUT_S = 120  # a hang fails the test instead of stalling the suite


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(str(tiny_llama_dir), device="cpu", kv_cache_memory=1 << 20, max_num_seqs=4)


def _in_threads(n: int, work) -> list:
    """Run work(i) in n threads started together; their results in thread order, or the first error raised."""
    results: list = [None] * n
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "a thread is still inside the engine: deadlock or livelock"
    if errors:
        raise errors[0]
    return results


def test_two_threads_generate_the_single_thread_results(llm, prompts):
    params = SamplingParams(max_tokens=6, **GREEDY)
    expected = [o.outputs[0].token_ids for o in llm.generate(["Hello"] * 2, params)]
    got = _in_threads(2, lambda i: llm.generate(["Hello"] * 2, params))
    for outs in got:
        assert [o.outputs[0].token_ids for o in outs] == expected
        assert all(o.finished and o.error is None for o in outs)
    assert not llm.llm_engine.has_unfinished_requests()


def test_many_threads_mixed_calls_each_get_their_own(llm, prompts):
    """Different prompts, lengths and call kinds (generate, chat, stream) in 6 threads over 4 seats."""
    lengths = [3, 9, 5, 7, 4, 8]
    work_prompts = [prompts[i % len(prompts)] for i in range(6)]

    def work(i: int):
        params = SamplingParams(max_tokens=lengths[i], **GREEDY)
        if i % 3 == 2:
            return list(llm.stream(work_prompts[i], params))[-1].outputs[0].token_ids
        if i % 3 == 1:
            return llm.chat([{"role": "user", "content": work_prompts[i]}], params)[0].outputs[0].token_ids
        return llm.generate([work_prompts[i]] * 2, params)[1].outputs[0].token_ids

    expected = [work(i) for i in range(6)]  # one thread, one call at a time
    assert _in_threads(6, work) == expected
    assert not llm.llm_engine.has_unfinished_requests()
    assert llm.llm_engine.block_manager.num_free_blocks == llm.llm_engine.block_manager.num_blocks


def test_an_abandoned_stream_leaves_nothing_running(llm):
    stream = llm.stream("Hello, my name is", SamplingParams(max_tokens=20, **GREEDY))
    next(stream)
    stream.close()
    assert not llm.llm_engine.has_unfinished_requests()
    assert llm.generate("Hello", SamplingParams(max_tokens=2, **GREEDY))[0].error is None


def test_step_level_api_collects_as_requests_finish(llm):
    ids = [llm.add_request(p, SamplingParams(max_tokens=n, **GREEDY)) for p, n in (("Hello", 2), ("The", 6))]
    first = llm.wait(ids)
    assert [o.request_id for o in first] == [ids[0]] and len(first[0].outputs[0].token_ids) == 2
    rest = []
    while len(rest) < 1:
        rest += llm.wait([ids[1]], one_step=True)
    assert rest[0].request_id == ids[1] and len(rest[0].outputs[0].token_ids) == 6
    llm.abort(ids)  # already collected: nothing to do, no error

