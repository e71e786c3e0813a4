"""EngineLoop: one LLMEngine shared by any number of threads, each getting back the outputs of its own requests."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from llmctl.core.engine.engine import LLMEngine
from llmctl.core.engine.outputs import RequestOutput
from llmctl.core.errors import UsageError


class EngineLoop:
    """Serialises every use of the engine and routes each step's outputs to the caller that owns the request.

    The engine is not thread-safe (its scheduler, block manager and in-flight step are plain state), so one
    thread at a time is inside it: a step, an add or an abort. The thread that steps advances every caller's
    requests together (they share the batch) and files the outputs by request id; the others sleep on the
    condition and wake up to collect theirs. Adds and aborts go before the next step, so a caller that keeps
    stepping cannot starve a thread that wants to add a request. Steps run without the condition's lock held,
    so waiting threads can collect outputs filed by earlier steps meanwhile.
    """

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._cond = threading.Condition()
        self._busy = False  # a thread is inside the engine
        self._queued = 0  # threads waiting to add or abort: they go before the next step
        self._owned: set[str] = set()  # requests some caller will collect
        self._watched: set[str] = set()  # owned requests whose callers want every output, not just the last
        self._finished: dict[str, RequestOutput] = {}
        self._latest: dict[str, RequestOutput] = {}  # the newest output of a watched request still running

    # -- exclusive use of the engine for adds and aborts ----------------------------------------------

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """The engine to this thread alone, ahead of the next step."""
        with self._cond:
            self._queued += 1
            try:
                while self._busy:
                    self._cond.wait()
            finally:
                self._queued -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def add(self, prompt: dict, params, *, watch: bool = False) -> str:
        """Queue one request ({"prompt"} and/or {"prompt_token_ids"}); its id. watch: every output is kept."""
        with self._turn():
            engine = self.engine
            request_id = engine.next_request_id()
            engine.add_request(request_id, params, prompt=prompt.get("prompt"),
                               prompt_token_ids=prompt.get("prompt_token_ids"))
            with self._cond:
                self._owned.add(request_id)
                if watch:
                    self._watched.add(request_id)
            return request_id

    def abort(self, request_ids: Collection[str]) -> None:
        """Drop these requests, running or finished and not collected; unknown ids are ignored."""
        with self._turn():
            for request_id in request_ids:
                self.engine.abort_request(request_id)
                with self._cond:
                    self._forget(request_id)

    def _forget(self, request_id: str) -> None:
        self._owned.discard(request_id)
        self._watched.discard(request_id)
        self._finished.pop(request_id, None)
        self._latest.pop(request_id, None)

    # -- stepping -------------------------------------------------------------------------------------

    def wait(self, request_ids: Collection[str], *, one_step: bool = False) -> list[RequestOutput]:
        """Outputs of these requests: each finished one once (then forgotten), and the newest output of each
        watched one still running. Steps the engine (or waits for the thread stepping it) until there is at
        least one; with one_step, returns after one step even with none (for callers that also read input)."""
        while True:
            stepping = False
            outs = None
            try:
                with self._cond:
                    while True:
                        collected = self._collect(request_ids)
                        if collected:
                            return collected
                        if not self._busy and not self._queued:
                            break
                        stepped = self._busy
                        self._cond.wait()
                        if one_step and stepped:
                            return self._collect(request_ids)
                    if not self.engine.has_unfinished_requests():
                        raise UsageError(f"request(s) {', '.join(sorted(request_ids))} are not running")
                    finished_only = not self._watched
                    self._busy = stepping = True  # no call in between: Ctrl-C cannot leave the engine marked busy
                outs = self.engine.step(finished_only=finished_only)
            finally:
                if stepping:
                    with self._cond:
                        self._busy = False
                        for out in outs or ():
                            self._file(out)
                        self._cond.notify_all()
            if one_step:
                with self._cond:
                    return self._collect(request_ids)

    def _file(self, out: RequestOutput) -> None:
        request_id = out.request_id
        if request_id not in self._owned:
            return  # aborted, or added to the engine directly: nobody here collects it
        if out.finished:
            self._finished[request_id] = out
            self._latest.pop(request_id, None)
        elif request_id in self._watched:
            self._latest[request_id] = out

    def _collect(self, request_ids: Collection[str]) -> list[RequestOutput]:
        outs = []
        for request_id in request_ids:
            out = self._finished.pop(request_id, None)
            if out is not None:
                self._forget(request_id)
            else:
                out = self._latest.pop(request_id, None)
            if out is not None:
                outs.append(out)
        return outs
