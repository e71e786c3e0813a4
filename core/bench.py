"""Benchmark protocol: load time, TTFT, decode tok/s and throughput of llmctl, optionally beside transformers.

Embedding architectures take the protocol in core/bench_embed.py (sentences/s) through the same run_bench.
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmctl.core.errors import UnsupportedModelError, UsageError

# torch and transformers are imported inside functions: core/ outside core/engine stays import-light.

PROTOCOL = (
    "random token-id prompts (seed 0) of input_len; greedy; exactly output_len new tokens per prompt "
    "(EOS masked until then: llmctl min_tokens=max_tokens, transformers min_new_tokens=max_new_tokens); "
    "one warm-up per side (llmctl's offline run: first a 2-token pass over max_num_seqs + 8 of its prompts); "
    "CUDA synchronized before every clock read; "
    "load = building the model and filling its weights (random init with --random-weights); "
    "ttft = median wall time of `repeats` one-token requests for one prompt; "
    "decode = (output_len - 1) tokens / time from first to last token, batch 1; "
    "batch = batch_size prompts together, output tokens / total time (prefill included); "
    "offline = num_prompts prompts submitted at once (llmctl only); "
    "transformers: generate() with sdpa attention (eager where transformers has none: Gemma 2, BLOOM, MPT), "
    "dynamic KV cache, equal-length prompts (no padding); "
    "peak GPU memory = torch.cuda.max_memory_allocated per side (llmctl's includes its preallocated KV cache); "
    "weights with --against: transformers' tensors copied into llmctl (handover 'cpu': through CPU memory, "
    "transformers freed before llmctl builds; 'device': copied on the device, llmctl's peak measured after "
    "transformers is freed; 'none': each side its own random weights, greedy tokens then differ)"
)

RATIO_KEYS = ("load_s", "ttft_ms", "decode_tok_s", "batch_output_tok_s")
HANDOVERS = ("cpu", "device", "none")
DEFAULT_BATCH_SIZE = 8  # generation; embeddings default to bench_embed.DEFAULT_EMBED_BATCH_SIZE


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to measure; validated on construction (UsageError, never an assert)."""

    model: str
    random_weights: bool = False
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int | None = None  # None: 8 for generation, 64 for embedding models
    input_len: int = 128
    output_len: int = 128
    num_prompts: int | None = None  # None: 1000 on CUDA (vLLM's benchmark default), 4 x batch_size elsewhere
    against: str | None = None
    enforce_eager: bool = False
    max_model_len: int | None = None
    repeats: int = 5
    seed: int = 0
    kv_cache_memory: int | None = None  # bytes of KV cache on any device (the engine's default when None)
    max_num_seqs: int | None = None  # llmctl's engine; None: max(the engine's default, batch_size)
    handover: str = "cpu"  # how --against hands transformers' weights to llmctl: "cpu" | "device" | "none"
    embed_min_len: int = 16  # embedding models: input lengths uniform in [embed_min_len, embed_max_len]
    embed_max_len: int = 512

    def __post_init__(self) -> None:
        for name in ("batch_size", "input_len", "repeats", "max_num_seqs", "embed_min_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
        if self.embed_max_len < self.embed_min_len:
            raise UsageError(f"the longest embedding input ({self.embed_max_len}) is shorter than the shortest "
                             f"({self.embed_min_len})")  # fmt: skip
        if self.handover not in HANDOVERS:
            raise UsageError(f"handover must be one of {', '.join(HANDOVERS)}, got {self.handover!r}")
        if self.output_len < 2:
            raise UsageError(f"output_len must be at least 2 (decode speed is measured after the first token), "
                             f"got {self.output_len}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise UsageError(f"num_prompts must be at least 1, got {self.num_prompts}")
        if self.against not in (None, "transformers"):
            raise UsageError(f"cannot bench against {self.against!r}", hint="use --against transformers")

    @property
    def generate_batch_size(self) -> int:
        return self.batch_size or DEFAULT_BATCH_SIZE


@dataclass
class SideResult:
    """The numbers of one implementation; None where a number does not apply (CPU memory, no CUDA graphs)."""

    load_s: float
    init_s: float
    cuda_graph_capture_s: float | None
    ttft_ms: float
    decode_tok_s: float
    batch_output_tok_s: float
    offline_output_tok_s: float | None = None
    offline_total_tok_s: float | None = None
    offline_elapsed_s: float | None = None
    offline_output_tokens: int | None = None
    peak_gpu_memory_gib: float | None = None
    decode_token_ids: list[int] = field(default_factory=list, repr=False)


# -- helpers -------------------------------------------------------------------------------------------


def clock(device) -> float:
    """perf_counter after the device has finished its queued work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_gib(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def random_prompts(n: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """n prompts of `length` token ids drawn uniformly from the vocabulary, reproducibly."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n, length), generator=gen).tolist()


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def leading_match(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy continuations share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# -- llmctl --------------------------------------------------------------------------------------------


def _engine_run(engine, prompts: list[list[int]], params, device) -> tuple[float, float, list[list[int]]]:
    """Submit prompts together and step until all finish: (first-token s, total s, output ids per prompt)."""
    ids = []
    for p in prompts:
        rid = engine.next_request_id()
        engine.add_request(rid, params, prompt_token_ids=p)
        ids.append(rid)
    tokens: dict[str, list[int]] = {}
    first = None
    t0 = clock(device)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.error is not None:
                raise UsageError(f"llmctl rejected a benchmark prompt: {out.error}")
            if first is None and out.outputs[0].token_ids:
                first = clock(device)
            if out.finished:
                tokens[out.request_id] = list(out.outputs[0].token_ids)
    end = clock(device)
    return (first if first is not None else end) - t0, end - t0, [tokens[r] for r in ids]


def _params(n: int):
    from llmctl.core.engine.sampling_params import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n)


def build_llmctl(cfg: BenchConfig, path: Path, device, state: dict | None, log: Callable[[str], None]):
    """Construct the LLM (timed); when `state` holds transformers' tensors, copy them over its weights (untimed)."""
    from llmctl.core.engine.config import default_max_num_seqs
    from llmctl.core.engine.llm import LLM
    from llmctl.core.engine.loader import load_weights

    log("llmctl: loading")
    t0 = clock(device)
    llm = LLM(
        str(path), dtype=cfg.dtype, device=device, skip_tokenizer_init=True, seed=cfg.seed,
        load_format="dummy" if cfg.random_weights else "auto",
        max_model_len=cfg.max_model_len, max_num_seqs=cfg.max_num_seqs or max(default_max_num_seqs(device), cfg.generate_batch_size),
        enforce_eager=cfg.enforce_eager,
        **({"kv_cache_memory": cfg.kv_cache_memory} if cfg.kv_cache_memory else {}),
    )
    init_s = clock(device) - t0
    if state is not None:
        load_weights(llm.llm_engine.runner.model, state.items(), llm.dtype)
    return llm, init_s


def bench_llmctl(llm, init_s: float, cfg: BenchConfig, num_prompts: int, log: Callable[[str], None]) -> SideResult:
    """Warm up, then TTFT, batch-1 decode, batch throughput and offline throughput on llmctl's engine."""
    engine, device = llm.llm_engine, llm.device
    vocab = llm.hf_config.vocab_size
    one = random_prompts(1, cfg.input_len, vocab, cfg.seed)
    batch_size = cfg.generate_batch_size
    batch = random_prompts(batch_size, cfg.input_len, vocab, cfg.seed + 1)
    log("llmctl: warm-up")
    _engine_run(engine, one, _params(4), device)
    _engine_run(engine, batch, _params(2), device)

    log("llmctl: time to first token")
    ttft = statistics.median(_engine_run(engine, one, _params(1), device)[1] for _ in range(cfg.repeats))
    log("llmctl: decode at batch 1")
    first, total, toks = _engine_run(engine, one, _params(cfg.output_len), device)
    decode = (cfg.output_len - 1) / max(total - first, 1e-9)
    log(f"llmctl: batch of {batch_size}")
    _, batch_s, _ = _engine_run(engine, batch, _params(cfg.output_len), device)

    log(f"llmctl: offline throughput, {num_prompts} prompts")
    prompts = random_prompts(num_prompts, cfg.input_len, vocab, cfg.seed + 2)
    # The offline run's own shapes first (full token-budget prefill steps beside the widest decode batches), for two
    # tokens: on a fresh H100 the first offline run measured 10.4k out tok/s, later ones 14.1k (one-time work).
    warm = prompts[: engine.config.max_num_seqs + 8]
    llm.generate([{"prompt_token_ids": p} for p in warm], _params(2), use_tqdm=False)
    t0 = clock(device)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], _params(cfg.output_len))
    offline_s = clock(device) - t0
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    in_tokens = sum(len(o.prompt_token_ids) for o in outs)
    return SideResult(
        load_s=llm.load_seconds,
        init_s=init_s,
        cuda_graph_capture_s=llm.llm_engine.cuda_graph_capture_seconds,
        ttft_ms=ttft * 1e3,
        decode_tok_s=decode,
        batch_output_tok_s=batch_size * cfg.output_len / batch_s,
        offline_output_tok_s=out_tokens / offline_s,
        offline_total_tok_s=(out_tokens + in_tokens) / offline_s,
        offline_elapsed_s=offline_s,
        offline_output_tokens=out_tokens,
        peak_gpu_memory_gib=peak_gpu_gib(device),
        decode_token_ids=toks[0],
    )


def handover_state(model, handover: str) -> dict | None:
    """transformers' tensors by HF checkpoint name for llmctl to copy: on the CPU ("cpu", a copy only when they
    live elsewhere), where they are ("device": no copy, they stay alive as long as the dict), or None ("none")."""
    if handover == "none":
        return None
    state = model.state_dict()
    try:  # transformers 5 renames some checkpoint keys on load (GPT-NeoX's embed_out): llmctl reads the hub's names
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        pass
    else:
        state = revert_weight_conversion(model, state)
    if handover == "device":
        return {name: t.detach() for name, t in state.items()}
    return {name: t.detach().to("cpu") for name, t in state.items()}


def bench_task(hf_config):
    """("generate" | "embed", model_def class): fails before any model is built when llmctl cannot run it."""
    from llmctl.core import registry
    from llmctl.core.errors import ModelReadError

    archs = getattr(hf_config, "architectures", None) or []
    if not archs:
        raise ModelReadError("config.json has no 'architectures' entry: cannot tell which model to bench")
    row = registry.get_arch(archs[0])
    if row.status != "native":
        raise UnsupportedModelError(
            f"llmctl bench runs llmctl's own engine, which has no model definition for {row.architecture} yet",
            hint="`llmctl check MODEL` shows what runs natively",
        )
    task = registry.GENERATE if registry.GENERATE in row.tasks else registry.EMBED
    return task, registry.load_model_class(row)


def environment(cfg: BenchConfig, path: Path, device, dtype, task: str) -> dict[str, Any]:
    """The keys every result starts with: what ran, where, with which versions, when."""
    import torch
    import transformers

    from llmctl import __version__
    from llmctl.core.engine.tokenizer import is_gguf

    return {
        "model": cfg.model,
        "model_path": str(path),
        "task": task,
        "weights": "random" if cfg.random_weights else ("gguf (dequantised)" if is_gguf(path) else "checkpoint"),
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "llmctl_version": __version__,
        "torch_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def settings(cfg: BenchConfig, **resolved: Any) -> dict[str, Any]:
    """The result's "settings": every BenchConfig field but the model, then the values resolved for this run."""
    return {**{k: v for k, v in asdict(cfg).items() if k != "model"}, **resolved}


# -- the whole run -------------------------------------------------------------------------------------


def run_bench(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the protocol and return one JSON-ready dict (see PROTOCOL, or EMBED_PROTOCOL for embedding models;
    cli/bench.py renders it)."""
    from llmctl.core.engine.model_source import load_hf_config, resolve_device, resolve_dtype, resolve_model_path
    from llmctl.core.engine.tokenizer import is_gguf

    log = log or (lambda _msg: None)
    path = resolve_model_path(cfg.model)
    if cfg.random_weights and is_gguf(path):
        raise UsageError("--random-weights needs a model folder with config.json, not a .gguf file")
    device = resolve_device(cfg.device)
    hf_config = load_hf_config(path)
    task, model_cls = bench_task(hf_config)
    dtype = resolve_dtype(cfg.dtype, hf_config, device)
    if task == "embed":
        from llmctl.core.bench_embed import run_embed_bench

        return run_embed_bench(cfg, path, device, hf_config, dtype, model_cls, log)
    if cfg.max_model_len is not None and cfg.max_model_len < cfg.input_len + cfg.output_len:
        raise UsageError(
            f"max_model_len={cfg.max_model_len} is less than input_len + output_len = {cfg.input_len + cfg.output_len}"
        )
    batch_size = cfg.generate_batch_size
    num_prompts = cfg.num_prompts or (1000 if device.type == "cuda" else 4 * batch_size)

    hf_result = state = attention = None
    if cfg.against == "transformers":
        # transformers first, so its weights can be handed over and its memory freed before llmctl builds.
        _reset_peak(device)
        from llmctl.core.bench_transformers import bench_transformers, build_transformers

        model, load_s = build_transformers(cfg, path, dtype, device, log)
        hf_result = bench_transformers(model, load_s, cfg, device, log)
        attention = model.config._attn_implementation
        state = handover_state(model, cfg.handover)  # "device": the dict keeps transformers' tensors alive
        del model
        gc.collect()
    _reset_peak(device)
    llm, init_s = build_llmctl(cfg, path, device, state, log)
    state_handed_over = state is not None or not cfg.random_weights
    if state is not None and cfg.handover == "device":
        state = None
        _reset_peak(device)  # transformers' tensors are gone: the peak from here on is llmctl's own
    state = None
    ours = bench_llmctl(llm, init_s, cfg, num_prompts, log)
    del llm
    gc.collect()

    result: dict[str, Any] = {
        **environment(cfg, path, device, dtype, "generate"),
        "settings": settings(cfg, num_prompts=num_prompts, batch_size=batch_size),
        "protocol": PROTOCOL,
        "llmctl": _side_dict(ours),
        "transformers": None,
        "ratio_llmctl_over_transformers": None,
        "greedy_tokens_matching": None,
        "transformers_attention": attention,
    }
    if hf_result is not None:
        result["transformers"] = _side_dict(hf_result)
        result["ratio_llmctl_over_transformers"] = {
            k: _ratio(getattr(ours, k), getattr(hf_result, k)) for k in RATIO_KEYS
        }
        if state_handed_over:
            result["greedy_tokens_matching"] = leading_match(ours.decode_token_ids, hf_result.decode_token_ids)
    return result


def _side_dict(side: SideResult) -> dict[str, Any]:
    d = asdict(side)
    d.pop("decode_token_ids")
    return d
