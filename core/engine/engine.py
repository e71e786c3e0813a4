"""LLMEngine: the step loop — add requests, schedule, run the model, sample, detokenize, stop, report."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable

import torch

from llmctl.core.engine.detokenizer import IncrementalDetokenizer, find_stop
from llmctl.core.engine.config import EngineConfig
from llmctl.core.engine.kv_cache import BlockManager, KVCacheSpec, allocate_kv_caches, size_kv_cache
from llmctl.core.engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from llmctl.core.engine.runner import InflightStep, ModelRunner
from llmctl.core.engine.sampler import Sampler, SamplingState
from llmctl.core.engine.scheduler import Scheduler
from llmctl.core.engine.sequence import Sequence, SequenceStatus
from llmctl.core.errors import UsageError
from llmctl.core.values import text_problem, token_id_list
from llmctl.model_defs.layers.rotary import RotaryEmbedding


class LLMEngine:
    """Continuous-batching generation over a paged KV cache.

    `add_request` queues a request; each `step()` runs one packed batch and returns a RequestOutput for
    every request that produced a token (cumulative text and ids, `finished` set on the last one) or
    was rejected (`error` set, finish_reason "error"). Requests that can never run (a prompt longer
    than max_model_len, an empty prompt) are rejected one by one; the others go on.

    `config` is resolved (EngineConfig.resolve); size_kv_cache (core/engine/kv_cache.py) fixes the cache's blocks,
    lowering max_model_len to what they hold when it may; `self.config` is the config the engine runs with.
    On CUDA, decode steps run at bucketed batch sizes on static inputs and, unless enforce_eager, as CUDA graphs
    captured here (cuda_graph_capture_seconds says how long that took); see core/engine/cuda_graph.py.
    padded_decode (default: on for CUDA) sends decode steps through that path on any device.

    async_scheduling (default: on wherever decode is padded) overlaps the host's work with the device's during
    runs of decode steps: step n + 1 is queued, fed by step n's sampled tokens on the device, before the host
    reads step n's tokens back and does its bookkeeping (stop checks, detokenizing, outputs). A request that stops
    on a token therefore costs one extra decode step, whose token is dropped; results are the same either way.
    It applies to steps whose requests need no read-back to sample (no penalties, no logprobs).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        kv_spec: KVCacheSpec,
        config: EngineConfig,
        *,
        tokenizer=None,
        eos_token_ids: Iterable[int] = (),
    ):
        if not isinstance(config.device, torch.device) or config.max_num_seqs is None:
            raise ValueError("LLMEngine needs a resolved EngineConfig (EngineConfig.resolve)")
        self.device = config.device
        self.tokenizer = tokenizer
        self.eos_token_ids = set(eos_token_ids)
        rope_len = min((m.max_position for m in model.modules() if isinstance(m, RotaryEmbedding)), default=None)
        if rope_len is not None and config.max_model_len > rope_len:  # the rotary kernels do not bound-check positions
            raise UsageError(f"max_model_len={config.max_model_len} is past the model's rotary cache of {rope_len} "
                             "positions", hint=f"use max_model_len <= {rope_len}")  # fmt: skip
        self.config = config = size_kv_cache(model, kv_spec, config)
        self.max_model_len = config.max_model_len
        self.block_manager = BlockManager(config.num_kv_blocks, config.block_size)
        kv_caches = allocate_kv_caches(kv_spec, config.num_kv_blocks, config.block_size, self.device)
        self.sampler = Sampler(seed=config.seed, device=self.device)  # unseeded requests share its generator
        self.runner = ModelRunner(model, kv_caches, config, self.sampler)
        if (self.device.type == "cuda" and not config.enforce_eager and self.runner.decode is not None
                and model.supports_cuda_graphs):
            self.runner.decode.capture()
        self.scheduler = Scheduler(config, self.block_manager)
        self.async_scheduling = config.async_scheduling
        self._inflight: InflightStep | None = None  # a decode step queued on the device, its tokens not read yet
        self._token_text: dict[int, str] = {}
        self._seqs: dict[str, Sequence] = {}
        self._rejected: list[Sequence] = []
        self._counter = itertools.count()
        self.max_prompt_len = model.max_prompt_len()

    # -- requests -----------------------------------------------------------------------------------

    def next_request_id(self) -> str:
        return str(next(self._counter))

    def add_request(
        self,
        request_id: str,
        params,
        prompt: str | None = None,
        prompt_token_ids: list[int] | None = None,
        arrival_time: float | None = None,
    ) -> None:
        """Queue one request; a text prompt is tokenized here unless prompt_token_ids are given."""
        if request_id in self._seqs:
            raise UsageError(f"request id {request_id!r} is already in use")
        bad_input = None
        if prompt_token_ids is None:
            if prompt is None:
                raise UsageError("a request needs a text prompt or prompt_token_ids")
            if self.tokenizer is None:
                raise UsageError(
                    "this LLM was built with skip_tokenizer_init=True: pass token prompts",
                    hint='use {"prompt_token_ids": [...]} instead of a string',
                )
            why = text_problem(prompt) if isinstance(prompt, str) else f"is a {type(prompt).__name__}, not text"
            bad_input = None if why is None else f"the prompt {why}"
            prompt_token_ids = [] if bad_input else self.tokenizer.encode(prompt)
        else:
            ids = token_id_list(prompt_token_ids)  # 1.7 is not token 1: refused, not truncated
            if ids is None:
                bad_input = f"prompt_token_ids must be a list of integers, got {prompt_token_ids!r:.60}"
            prompt_token_ids = ids or []
        metrics = RequestMetrics(arrival_time=time.time() if arrival_time is None else arrival_time)
        seq = Sequence(request_id, prompt, prompt_token_ids, params, metrics)
        self._seqs[request_id] = seq
        error = bad_input or self._validate(seq)
        if error is not None:
            self._reject(seq, error)
            return
        seq.sampling_state = SamplingState(
            params, seq.prompt_token_ids, seq.output_token_ids, tuple(sorted(self.eos_token_ids))
        )
        if self.tokenizer is not None:
            seq.detokenizer = IncrementalDetokenizer(
                self.tokenizer, seq.prompt_token_ids, skip_special_tokens=params.skip_special_tokens
            )
        self.scheduler.add(seq)

    def _reject(self, seq: Sequence, error: str) -> None:
        """Finish seq with an error; its output goes out with the next step."""
        seq.error = error
        seq.finish_reason = "error"
        seq.status = SequenceStatus.FINISHED
        seq.metrics.finished_time = time.time()
        self._rejected.append(seq)

    def _validate(self, seq: Sequence) -> str | None:
        if seq.prompt_len == 0:
            return "the prompt is empty"
        why = self.scheduler.check_fits(seq.prompt_len)
        if why is not None:
            return why
        if self.max_prompt_len is not None and seq.prompt_len > self.max_prompt_len:
            return f"the prompt has {seq.prompt_len} tokens; this model takes prompts of at most {self.max_prompt_len}"
        vocab = self.vocab_size
        if min(seq.prompt_token_ids) < 0 or (vocab is not None and max(seq.prompt_token_ids) >= vocab):
            return f"the prompt holds token ids outside the vocabulary (size {vocab})"
        return None

    def abort_request(self, request_id: str) -> None:
        seq = self._seqs.pop(request_id, None)
        if seq is not None and not seq.is_finished:
            self.scheduler.finish(seq)
            seq.finish_reason = "abort"

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._rejected)

    def num_unfinished_requests(self) -> int:
        return self.scheduler.num_unfinished() + len(self._rejected)

    # -- the step -----------------------------------------------------------------------------------

    def step(self, finished_only: bool = False) -> list[RequestOutput]:
        """Run one packed batch; outputs of requests that advanced, finished or were rejected.

        finished_only=True reports only the requests that finished or were rejected (offline runs that wait for
        whole results skip building an output per running request per step).
        """
        outputs = [self._make_output(seq) for seq in self._rejected]
        for seq in self._rejected:
            self._seqs.pop(seq.request_id, None)
        self._rejected = []
        if self._inflight is not None:
            return outputs + self._step_overlapped(finished_only)
        sched = self.scheduler.schedule()
        if sched.is_empty:
            if self.scheduler.waiting and not self.scheduler.running:
                # Cannot happen while the cache holds max_model_len tokens; never spin if it does.
                seq = self.scheduler.waiting[0]
                self.scheduler.finish(seq)
                self._reject(seq, f"{seq.num_tokens} tokens need more KV cache blocks than the engine has")
            return outputs
        seqs = [seq for seq, _ in sched.scheduled]
        if (self.async_scheduling and not sched.preempted
                and all(n == 1 and seq.num_uncomputed_tokens == 1 for seq, n in sched.scheduled)
                and self.runner.can_launch(seqs)):
            self._launch(seqs, None)
            return outputs + self._step_overlapped(finished_only)
        result = self.runner.execute(sched.scheduled)
        for seq, n in sched.scheduled:
            seq.num_computed_tokens += n
            for entry in result.prompt_logprobs.get(id(seq), ()):
                seq.prompt_logprobs.append(self._logprobs(entry))
        return outputs + self._take_samples(result.sample_seqs, result.token_ids, result.logprobs, finished_only)

    def _take_samples(self, seqs, tokens, logprobs_raw, finished_only: bool) -> list[RequestOutput]:
        """Append each sequence's sampled token, finish the ones that stopped, and build the outputs."""
        outputs = []
        now = time.time()
        for seq, token, raw in zip(seqs, tokens, logprobs_raw):
            logprobs = None if raw is None else self._logprobs(raw)
            self._append_token(seq, token, logprobs, now)
            if seq.finish_reason is not None:
                self.scheduler.finish(seq)
                seq.metrics.finished_time = now
                self._seqs.pop(seq.request_id, None)
            elif finished_only:
                continue
            outputs.append(self._make_output(seq))
        return outputs

    # -- overlapped decode steps (async_scheduling) ---------------------------------------------------

    def _launch(self, seqs: list[Sequence], previous: InflightStep | None) -> None:
        self._inflight = self.runner.launch_decode(seqs, previous)
        for seq in seqs:
            seq.num_computed_tokens += 1

    def _step_overlapped(self, finished_only: bool) -> list[RequestOutput]:
        """Queue the next decode step when it is known without the in-flight step's tokens, then read those back.

        While a step is in flight its sequences' num_computed_tokens already count the position of the token it
        is sampling (one past num_tokens); appending that token makes them agree again.
        """
        step = self._inflight
        nxt = self._next_decode(step)
        self._inflight = None
        if nxt is not None:
            self._launch(nxt, step)
        live = [(seq, token) for seq, token in zip(step.seqs, step.token_ids()) if not seq.is_finished]
        return self._take_samples([s for s, _ in live], [t for _, t in live], [None] * len(live), finished_only)

    def _next_decode(self, step: InflightStep) -> list[Sequence] | None:
        """The sequences of the next decode step if it can be queued before `step`'s tokens are known, else None.

        That is when every running sequence was in `step` and will still run after its token (known now only for
        max_tokens and max_model_len; a stop token is seen later and its extra step dropped), nobody waiting could
        take a seat, and the cache grows without preempting anyone.
        """
        running = self.scheduler.running
        if len(running) != len(step.seqs):
            return None
        seqs = []
        for seq in step.seqs:
            if seq.status is not SequenceStatus.RUNNING:
                return None
            if not self._reaches_length(seq, pending=1):  # with the token in flight
                seqs.append(seq)
        if not seqs:
            return None
        if self.scheduler.waiting and len(seqs) < self.config.max_num_seqs:
            return None
        if not self.runner.can_launch(seqs):
            return None
        for seq in seqs:
            if not self.block_manager.grow(seq, seq.num_computed_tokens + 1):
                return None
        return seqs

    def _append_token(self, seq: Sequence, token: int, logprobs, now: float) -> None:
        seq.output_token_ids.append(token)
        if logprobs is not None:
            seq.output_logprobs.append(logprobs)
            seq.cumulative_logprob += logprobs[token].logprob
        if seq.metrics.first_token_time is None:
            seq.metrics.first_token_time = now
        seq.metrics.last_token_time = now
        params = seq.params
        delta_len = 0
        if seq.detokenizer is not None:
            delta = seq.detokenizer.step(token)
            delta_len = len(delta)
            seq.text = seq.detokenizer.text
        n_out = seq.num_output_tokens
        if n_out >= params.min_tokens:
            if not params.ignore_eos and token in self.eos_token_ids:
                seq.finish_reason = "stop"
                return
            if token in params.stop_token_ids:
                seq.finish_reason, seq.stop_reason = "stop", token
                return
            if params.stop and seq.detokenizer is not None:
                text, stop_str = find_stop(
                    seq.text, delta_len, params.stop, params.include_stop_str_in_output
                )
                if stop_str is not None:
                    seq.text = text if text is not None else seq.text
                    seq.finish_reason, seq.stop_reason = "stop", stop_str
                    return
        if self._reaches_length(seq):
            seq.finish_reason = "length"

    def _reaches_length(self, seq: Sequence, pending: int = 0) -> bool:
        """Whether seq, with `pending` more tokens, has all the tokens max_tokens or max_model_len allow."""
        max_tokens = seq.params.max_tokens
        if max_tokens is not None and seq.num_output_tokens + pending >= max_tokens:
            return True
        return seq.num_tokens + pending >= self.max_model_len

    @property
    def cuda_graph_capture_seconds(self) -> float | None:
        """How long capturing the decode CUDA graphs took at start-up; None when none were captured."""
        decode = self.runner.decode
        return decode.capture_seconds if decode is not None else None

    @property
    def vocab_size(self) -> int | None:
        # A multimodal backend model's config keeps its vocabulary in text_config.
        return getattr(self.runner.model.config, "vocab_size", None)

    def _logprobs(self, raw: dict[int, tuple[float, int]]) -> dict[int, Logprob]:
        return {tok: Logprob(lp, rank, self._decode_token(tok)) for tok, (lp, rank) in raw.items()}

    def _decode_token(self, token: int) -> str | None:
        if self.tokenizer is None:
            return None
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text

    def _make_output(self, seq: Sequence) -> RequestOutput:
        want_lp = getattr(seq.params, "logprobs", None) is not None
        completion = CompletionOutput(
            index=0,
            text=seq.text,
            token_ids=list(seq.output_token_ids),
            cumulative_logprob=seq.cumulative_logprob if want_lp else None,
            logprobs=list(seq.output_logprobs) if want_lp else None,
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
        )
        return RequestOutput(
            request_id=seq.request_id,
            prompt=seq.prompt,
            prompt_token_ids=seq.prompt_token_ids,
            prompt_logprobs=seq.prompt_logprobs,
            outputs=[completion],
            finished=seq.finish_reason is not None,
            metrics=seq.metrics,
            error=seq.error,
        )
