"""The LLM class: vLLM's offline API (generate, chat) on llmctl's own engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator, Sequence as Seq
from pathlib import Path
from typing import Any


from llmctl.core.engine.config import EngineConfig
from llmctl.core.engine.engine import LLMEngine
from llmctl.core.engine.engine_loop import EngineLoop
from llmctl.core.engine.kv_cache import kv_cache_spec
from llmctl.core.engine.model_source import (
    generation_config,
    load_hf_config,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
    select_model_class,
    weights_for,
)
from llmctl.core.engine.outputs import RequestOutput
from llmctl.core.engine.preflight import check_before_build
from llmctl.core.engine.sampling_params import SamplingParams
from llmctl.core.engine.tokenizer import (
    apply_chat_template,
    eos_token_ids,
    is_conversation,
    is_gguf,
    load_tokenizer,
)
from llmctl.core.errors import UnsupportedModelError, UsageError


class LLM:
    """Generate text from a model on llmctl's engine, with vLLM's offline API.

    `model` is a local folder, a .gguf file, or anything core/resolve.py resolves (hub ids, aliases); the options
    are vLLM's names, each with its default and meaning in EngineConfig (core/engine/config.py), which checks them
    (an unknown option is a UsageError). On CUDA, decode steps replay CUDA graphs captured at start-up for
    bucketed batch sizes; enforce_eager=True runs them eagerly instead (same kernels, same shapes, same tokens).

    One LLM may be used from several threads at once: their requests share the engine's batches and each call
    gets its own results (core/engine/engine_loop.py); embed calls run one at a time.
    """

    def __init__(self, model: str | Path, **options: Any):
        self.config = config = EngineConfig.from_options(model, **options)
        revision = config.revision
        path = resolve_model_path(config.model, revision)
        if config.quantization == "gguf" and not is_gguf(path):
            raise UnsupportedModelError("quantization='gguf' is not supported by llmctl's engine yet")

        self.model_path = path
        self.device = resolve_device(config.device)
        self.hf_config = load_hf_config(path, trust_remote_code=config.trust_remote_code, revision=revision)
        self.dtype = resolve_dtype(config.dtype, self.hf_config, self.device)
        self.task = _resolve_task(config.task, getattr(self.hf_config, "architectures", None))
        self.llm_engine = None
        self.embedder = None
        self._embed_lock = threading.Lock()  # one embed call at a time: its request ids and tokenizer are shared state
        if self.task == "embed":
            self._init_embedder(path, config)
            return
        model_cls = select_model_class(self.hf_config, config.model_impl, config.trust_remote_code)
        self.model_impl = "transformers" if model_cls.is_transformers_backend else "native"
        # ChatGLM's config (the repo's, or read natively) spells the position limit seq_length only.
        hf = self.hf_config
        positions = getattr(hf, "max_position_embeddings", None) or getattr(hf, "seq_length", None)
        config = config.resolve(positions)

        self.tokenizer = None
        if not config.skip_tokenizer_init:
            self.tokenizer = load_tokenizer(config.tokenizer or path, revision=config.tokenizer_revision or revision,
                                            trust_remote_code=config.trust_remote_code)  # fmt: skip
        from llmctl.core.engine.loader import build_model

        check_before_build(path, self.hf_config, self.dtype, self.device, config.load_format)
        t0 = time.perf_counter()
        if model_cls.is_transformers_backend and config.load_format != "dummy":
            # transformers loads its own model: its checkpoint conversions (MoE experts, renames) apply.
            net = model_cls.from_checkpoint(path, self.hf_config, self.dtype, self.device,
                                            trust_remote_code=config.trust_remote_code)
        else:
            net = build_model(self.hf_config, model_cls, self.dtype, self.device,
                              weights_for(path, config.load_format, self.dtype))
        self.load_seconds = time.perf_counter() - t0
        eos = eos_token_ids(self.tokenizer, self.hf_config, generation_config(path))
        self.llm_engine = LLMEngine(
            net, kv_cache_spec(net, self.dtype), config, tokenizer=self.tokenizer, eos_token_ids=eos
        )
        self.config = self.llm_engine.config  # resolved: the settings the engine runs with
        self.max_model_len = self.llm_engine.max_model_len
        self._loop = EngineLoop(self.llm_engine)

    def _init_embedder(self, path: Path, config: EngineConfig):
        from llmctl.core.engine.embedder import build_embedder

        if is_gguf(path):
            raise UnsupportedModelError("embedding models are read from HF folders, not .gguf files")
        self.tokenizer = None
        if not config.skip_tokenizer_init:
            revision = config.tokenizer_revision or config.revision
            self.tokenizer = load_tokenizer(config.tokenizer or path, revision=revision,
                                            trust_remote_code=config.trust_remote_code)  # fmt: skip
        t0 = time.perf_counter()
        self.embedder = build_embedder(
            path, self.hf_config, self.dtype, self.device, self.tokenizer,
            weights_for(path, config.load_format, self.dtype), config.max_model_len,
        )  # fmt: skip
        self.load_seconds = time.perf_counter() - t0
        self.max_model_len = self.embedder.config.max_seq_length

    @property
    def embedding_config(self):
        """The EmbeddingConfig (pooling, normalize, max_seq_length, prompts, dimension) of an embed LLM."""
        return self._need_embedder().config

    def _need_embedder(self):
        if self.embedder is None:
            raise UsageError("this LLM generates text: build it with task='embed' for embeddings")
        return self.embedder

    def _need_engine(self) -> LLMEngine:
        if self.llm_engine is None:
            raise UsageError("this LLM computes embeddings (task='embed'): use embed() / encode(), not generate")
        return self.llm_engine

    def get_tokenizer(self):
        return self.tokenizer

    # -- embed --------------------------------------------------------------------------------------

    def embed(
        self,
        texts: str | Seq[str],
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        use_tqdm: bool = False,
    ) -> list:
        """One EmbeddingRequestOutput per text, in order: `.outputs.embedding` is a list of floats.

        pooling ("cls" | "mean" | "max" | "lasttoken") and normalize None follow the checkpoint's
        sentence-transformers files; prompt is prepended to every text; dimensions keeps the first N
        components (Matryoshka). Texts longer than max_seq_length tokens are cut (`.truncated`).
        use_tqdm is accepted for vLLM compatibility and shows nothing.
        """
        embedder = self._need_embedder()
        with self._embed_lock:
            return embedder.embed(
                texts, pooling=pooling, normalize=normalize, dimensions=dimensions, prompt=prompt, batch_size=batch_size
            )

    encode = embed  # vLLM's name

    # -- generate -----------------------------------------------------------------------------------

    def generate(
        self,
        prompts: str | dict | Seq[str | dict],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order; a prompt that cannot run gets `error` set, the rest go on."""
        self._need_engine()
        items = _prompt_list(prompts)
        params = _params_list(sampling_params, len(items))
        return self._run(items, params, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = False,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
    ) -> list[RequestOutput]:
        """Apply the chat template to one conversation or a list of them, then generate."""
        self._need_engine()
        conversations = [messages] if is_conversation(messages) else list(messages)
        prompts = []
        for conv in conversations:
            text, ids = apply_chat_template(
                self.tokenizer,
                conv,
                add_generation_prompt=add_generation_prompt,
                chat_template=chat_template,
                continue_final_message=continue_final_message,
                tools=tools,
            )
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm)

    def stream(self, prompt: str | dict, sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield the growing RequestOutput of one prompt after each token; the last one has finished=True."""
        self._need_engine()
        params = sampling_params or SamplingParams()
        request_id = self._loop.add(_prompt_list(prompt)[0], params, watch=True)
        try:
            while True:
                for out in self._loop.wait([request_id]):
                    yield out
                    if out.finished:
                        return
        finally:  # a consumer that stops early (or Ctrl-C) leaves no request running
            self._loop.abort([request_id])

    # -- the step-level API: queue requests, collect them as they finish ------------------------------

    def add_request(self, prompt: str | dict, sampling_params: SamplingParams | None = None) -> str:
        """Queue one prompt (any form generate() takes) without running it; its request id, for wait()."""
        self._need_engine()
        return self._loop.add(_prompt_list(prompt)[0], sampling_params or SamplingParams())

    def wait(self, request_ids: Collection[str], *, one_step: bool = False) -> list[RequestOutput]:
        """Run the engine until at least one of these requests has finished; their outputs (each returned once).

        Requests of other callers (threads) advance in the same batches. one_step: return after one engine step
        even when none finished, so a caller can add requests that arrived meanwhile (continuous batching).
        """
        self._need_engine()
        return self._loop.wait(request_ids, one_step=one_step)

    def abort(self, request_ids: Collection[str]) -> None:
        """Drop requests queued with add_request that are no longer wanted (finished or not)."""
        self._need_engine()
        self._loop.abort(request_ids)

    def _run(self, items: list[dict], params: list[SamplingParams], use_tqdm: bool) -> list[RequestOutput]:
        request_ids: list[str] = []
        finished: dict[str, RequestOutput] = {}
        bar = _progress(len(items)) if use_tqdm else None
        try:
            for item, p in zip(items, params):
                request_ids.append(self._loop.add(item, p))
            remaining = set(request_ids)
            while remaining:
                for out in self._loop.wait(remaining):
                    finished[out.request_id] = out
                    remaining.discard(out.request_id)
                    if bar is not None:
                        bar.update(1)
        except BaseException:  # Ctrl-C or a failing step: leave no half-run request behind
            self._loop.abort(request_ids)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [finished[r] for r in request_ids]


def _resolve_task(task: str, architectures: list[str] | None) -> str:
    """ "generate" or "embed"; task "auto" is "embed" for architectures the registry lists only for embeddings."""
    if task in ("embed", "embedding"):
        return "embed"
    if task == "auto" and architectures:
        from llmctl.core import registry

        row = registry.lookup(architectures[0])
        if row is not None and registry.EMBED in row.tasks and registry.GENERATE not in row.tasks:
            return "embed"
    return "generate"


def _prompt_list(prompts) -> list[dict]:
    """Normalise generate()'s prompt forms to dicts with "prompt" and/or "prompt_token_ids"."""
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    items = []
    for p in prompts:
        if isinstance(p, str):
            items.append({"prompt": p})
        elif isinstance(p, dict) and ("prompt_token_ids" in p or "prompt" in p):
            items.append(p)
        else:
            raise UsageError(f'a prompt is a string, {{"prompt": ...}} or {{"prompt_token_ids": [...]}}; got {p!r}')
    return items


def _params_list(sampling_params, n: int) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * n
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * n
    params = list(sampling_params)
    if len(params) != n:
        raise UsageError(f"got {len(params)} SamplingParams for {n} prompts: pass one, or one per prompt")
    return params


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="generate", unit="req")
