"""The transformers side of `llmctl bench`: generate() on the same weights, with the same protocol."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from llmctl.core.bench import BenchConfig, SideResult, clock, peak_gpu_gib, random_prompts

# torch and transformers are imported inside functions: core/ outside core/engine stays import-light.


class _TokenTimes:
    """A generate() streamer that stamps each put(): the first is the prompt, then one per new token."""

    def __init__(self, device):
        self.device = device
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(clock(self.device))

    def end(self) -> None:
        pass


def build_transformers(cfg: BenchConfig, path: Path, dtype, device, log: Callable[[str], None]):
    """(model, load seconds): random init from config.json, or from the checkpoint / GGUF file."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    log("transformers: loading")
    t0 = clock(device)
    attn = "sdpa" if path.is_file() else sdpa_or_eager(AutoModelForCausalLM, path)
    kw = {"dtype": dtype, "attn_implementation": attn}
    if cfg.random_weights:
        config = AutoConfig.from_pretrained(str(path))
        torch.manual_seed(cfg.seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, **kw)
    elif path.is_file():  # a .gguf file: transformers dequantises it
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kw).to(device)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), device_map={"": device}, **kw)
    model.eval()
    return model, clock(device) - t0


def sdpa_or_eager(auto_cls, path: Path) -> str:
    """"sdpa" when transformers' class for this config supports it (Gemma 2, BLOOM and MPT do not), else "eager"."""
    from transformers import AutoConfig

    try:
        model_cls = auto_cls._model_mapping[type(AutoConfig.from_pretrained(str(path)))]
    except (KeyError, AttributeError, OSError, ValueError):
        return "sdpa"
    return "sdpa" if getattr(model_cls, "_supports_sdpa", True) else "eager"


def bench_transformers(model, load_s: float, cfg: BenchConfig, device, log: Callable[[str], None]) -> SideResult:
    """The same protocol through generate(): warm-up, TTFT, batch-1 decode (token times), batch throughput."""
    import torch

    vocab = model.config.vocab_size
    one = torch.tensor(random_prompts(1, cfg.input_len, vocab, cfg.seed), device=device)
    batch = torch.tensor(random_prompts(cfg.generate_batch_size, cfg.input_len, vocab, cfg.seed + 1), device=device)
    pad = model.generation_config.pad_token_id
    if pad is None:
        eos = model.generation_config.eos_token_id
        pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0

    @torch.inference_mode()
    def gen(ids, n: int, streamer=None):
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
            do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad, streamer=streamer,
        )

    log("transformers: warm-up")
    gen(one, 4)
    gen(batch, 2)
    log("transformers: time to first token")
    runs = []
    for _ in range(cfg.repeats):
        t0 = clock(device)
        gen(one, 1)
        runs.append(clock(device) - t0)
    log("transformers: decode at batch 1")
    times = _TokenTimes(device)
    out = gen(one, cfg.output_len, times)
    stamps = times.times[1:]  # the first put() is the prompt
    decode = (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9)
    log(f"transformers: batch of {cfg.generate_batch_size}")
    t0 = clock(device)
    batch_out = gen(batch, cfg.output_len)
    batch_s = clock(device) - t0
    new_tokens = (batch_out.shape[1] - cfg.input_len) * cfg.generate_batch_size
    return SideResult(
        load_s=load_s,
        init_s=load_s,
        cuda_graph_capture_s=None,
        ttft_ms=statistics.median(runs) * 1e3,
        decode_tok_s=decode,
        batch_output_tok_s=new_tokens / batch_s,
        peak_gpu_memory_gib=peak_gpu_gib(device),
        decode_token_ids=out[0, cfg.input_len :].tolist(),
    )
