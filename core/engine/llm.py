"""The LLM class: vLLM's offline API (generate, chat) on llmctl's own engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator, Sequence as Seq
from pathlib import Path
from typing import Any

import torch

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
from llmctl.core.errors import InvalidValueError, UnsupportedModelError, UsageError
from llmctl.core.support import max_model_len_problem
from llmctl.core.values import is_finite_number, seed_problem


# Engine options accepted beyond the named arguments; vLLM options that change nothing here are ignored.
_ENGINE_OPTIONS = {
    "max_num_batched_tokens", "block_size", "kv_cache_memory", "num_kv_blocks", "padded_decode", "async_scheduling",
}
_SIZE_OPTIONS = ("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_memory", "num_kv_blocks")
_IGNORED_OPTIONS = {"swap_space", "disable_log_stats", "tokenizer_mode", "enable_prefix_caching"}


class LLM:
    """Generate text from a model on llmctl's engine, with vLLM's offline API.

    `model` is a local folder, a .gguf file, or anything core/resolve.py resolves (hub ids, aliases).
    dtype "auto" keeps the checkpoint's dtype on CUDA and uses float32 on CPU when the checkpoint is
    bf16/fp16; device "auto" is cuda when available, else cpu. max_model_len defaults to the model's
    max_position_embeddings, lowered (with a warning) to what the KV cache holds. Engine options:
    max_num_batched_tokens (default max(8192 on CUDA / 2048 on CPU, max_num_seqs)), block_size (16), kv_cache_memory (bytes
    of KV cache on any device; default on CPU 1 GiB, on CUDA what gpu_memory_utilization leaves; capped
    at what max_num_seqs sequences of max_model_len need), num_kv_blocks (fixes the block count),
    max_num_seqs defaults to 512 on GPUs of 70 GiB or more, else 256 (core/engine/engine.py default_max_num_seqs).
    padded_decode (decode steps at bucketed batch sizes on static inputs; default: on for CUDA only),
    async_scheduling (queue decode step n + 1 before reading step n's tokens back; default: with padded_decode).
    On CUDA, decode steps replay CUDA graphs captured at start-up for bucketed batch sizes; enforce_eager=True
    runs them eagerly instead (same kernels, same shapes, same tokens).

    One LLM may be used from several threads at once: their requests share the engine's batches and each call
    gets its own results (core/engine/engine_loop.py); embed calls run one at a time.
    """

    def __init__(
        self,
        model: str | Path,
        tokenizer: str | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        seed: int | None = 0,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        quantization: str | None = None,
        model_impl: str = "auto",
        task: str = "generate",
        load_format: str = "auto",
        skip_tokenizer_init: bool = False,
        gpu_memory_utilization: float = 0.9,
        max_num_seqs: int | None = None,
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        **engine_options: Any,
    ):
        unknown = set(engine_options) - _ENGINE_OPTIONS - _IGNORED_OPTIONS
        if unknown:
            raise UsageError(f"unknown LLM option(s): {', '.join(sorted(unknown))}")
        if task not in ("generate", "auto", "embed", "embedding"):
            raise UnsupportedModelError(f"task={task!r} is not available; use 'generate' or 'embed'")
        if model_impl not in ("auto", "native", "transformers"):
            raise UnsupportedModelError(
                f"model_impl={model_impl!r} is not available; use 'auto', 'native' or 'transformers'"
            )
        if tensor_parallel_size != 1:
            raise UsageError("llmctl runs on one device: tensor_parallel_size must be 1")
        for name in _SIZE_OPTIONS:  # 1e9 bytes is a fine kv_cache_memory; 2.5 sequences or NaN bytes are not
            value = max_num_seqs if name == "max_num_seqs" else engine_options.get(name)
            if value is None:
                continue
            number = int(value) if is_finite_number(value) and float(value).is_integer() else None
            if number is None or number < 1:
                raise InvalidValueError(f"{name} must be a positive integer, got {value!r}")
            if name == "max_num_seqs":
                max_num_seqs = number
            else:
                engine_options[name] = number
        if seed_problem(seed) is not None:
            raise InvalidValueError(f"seed {seed_problem(seed)}")
        if not is_finite_number(gpu_memory_utilization) or not 0.0 < gpu_memory_utilization <= 1.0:
            raise UsageError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        path = resolve_model_path(model, revision)
        if quantization not in (None, "gguf") or (quantization == "gguf" and not is_gguf(path)):
            raise UnsupportedModelError(f"quantization={quantization!r} is not supported by llmctl's engine yet")

        self.model_path = path
        self.device = resolve_device(device)
        self.hf_config = load_hf_config(path, trust_remote_code=trust_remote_code, revision=revision)
        self.dtype = resolve_dtype(dtype, self.hf_config, self.device)
        self.task = _resolve_task(task, getattr(self.hf_config, "architectures", None))
        self.llm_engine = None
        self.embedder = None
        self._embed_lock = threading.Lock()  # one embed call at a time: its request ids and tokenizer are shared state
        if self.task == "embed":
            self._init_embedder(path, tokenizer, max_model_len, load_format, trust_remote_code,
                                tokenizer_revision or revision, skip_tokenizer_init)
            return
        model_cls = select_model_class(self.hf_config, model_impl, trust_remote_code)
        self.model_impl = "transformers" if model_cls.is_transformers_backend else "native"
        max_pos = getattr(self.hf_config, "max_position_embeddings", None)
        shrink = max_model_len is None  # the model's full context, unless the KV cache holds less
        too_long = max_model_len_problem(max_model_len, max_pos)  # the rule `llmctl check` applies too
        if too_long is not None:
            raise UsageError(too_long)
        if max_model_len is None:
            max_model_len = max_pos or 2048

        self.tokenizer = None
        if not skip_tokenizer_init:
            self.tokenizer = load_tokenizer(
                tokenizer or path, revision=tokenizer_revision or revision, trust_remote_code=trust_remote_code
            )
        from llmctl.core.engine.loader import build_model

        check_before_build(path, self.hf_config, self.dtype, self.device, load_format)
        t0 = time.perf_counter()
        if model_cls.is_transformers_backend and load_format != "dummy":
            # transformers loads its own model: its checkpoint conversions (MoE experts, renames) apply.
            net = model_cls.from_checkpoint(path, self.hf_config, self.dtype, self.device,
                                            trust_remote_code=trust_remote_code)
        else:
            net = build_model(self.hf_config, model_cls, self.dtype, self.device,
                              weights_for(path, load_format, self.dtype))
        self.load_seconds = time.perf_counter() - t0
        eos = eos_token_ids(self.tokenizer, self.hf_config, generation_config(path))
        self.llm_engine = LLMEngine(
            net,
            kv_cache_spec(net, self.dtype),
            tokenizer=self.tokenizer,
            device=self.device,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=engine_options.get("max_num_batched_tokens"),
            block_size=engine_options.get("block_size", 16),
            kv_cache_memory=engine_options.get("kv_cache_memory"),
            gpu_memory_utilization=gpu_memory_utilization,
            num_kv_blocks=engine_options.get("num_kv_blocks"),
            eos_token_ids=eos,
            seed=seed,
            shrink_max_model_len=shrink,
            enforce_eager=enforce_eager,
            padded_decode=engine_options.get("padded_decode"),
            async_scheduling=engine_options.get("async_scheduling"),
        )
        self.max_model_len = self.llm_engine.max_model_len
        self._loop = EngineLoop(self.llm_engine)

    def _init_embedder(self, path, tokenizer, max_model_len, load_format, trust_remote_code, revision, skip_tok):
        from llmctl.core.engine.embedder import build_embedder

        if is_gguf(path):
            raise UnsupportedModelError("embedding models are read from HF folders, not .gguf files")
        self.tokenizer = None
        if not skip_tok:
            self.tokenizer = load_tokenizer(tokenizer or path, revision=revision, trust_remote_code=trust_remote_code)
        t0 = time.perf_counter()
        self.embedder = build_embedder(
            path, self.hf_config, self.dtype, self.device, self.tokenizer,
            weights_for(path, load_format, self.dtype), max_model_len,
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
