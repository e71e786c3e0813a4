"""One embedding LLM used from several threads at once: each call gets the vectors a single-thread call gets."""

from __future__ import annotations

import threading

import numpy as np

from llmctl import LLM

TIMEOUT_S = 120


def test_threads_embed_the_single_thread_vectors(tiny_model, texts):
    llm = LLM(str(tiny_model("bert_cls")), task="embed", device="cpu")
    chunks = [t for t in texts(40) if t][:40]
    chunks = [chunks[i::4] for i in range(4)]
    expected = [[o.outputs.embedding for o in llm.embed(chunk, batch_size=3)] for chunk in chunks]
    got: list = [None] * 4
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run(i: int) -> None:
        try:
            start.wait()
            got[i] = [o.outputs.embedding for o in llm.encode(chunks[i], batch_size=3)]
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(np.array(g), np.array(e))
