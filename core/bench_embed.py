"""The embedding protocol of `llmctl bench`: sentences/s of llmctl's embedder, optionally beside transformers."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmctl.core.bench import (
    BenchConfig,
    _ratio,
    _reset_peak,
    clock,
    environment,
    handover_state,
    peak_gpu_gib,
    settings,
)
from llmctl.core.errors import UsageError

# torch and transformers are imported inside functions: core/ outside core/engine stays import-light.

EMBED_PROTOCOL = (
    "num_prompts token-id inputs (seed 0) of lengths drawn uniformly in [min_len, max_len] (clipped to the "
    "model's max positions), ids uniform over the vocabulary except the pad id; one warm-up pass per side on "
    "2 x batch_size inputs; CUDA synchronized before every clock read; "
    "load = building the model and filling its weights (random init on the device with --random-weights); "
    "llmctl: LLM(task='embed').embed() on the token-id inputs (length-sorted, padding-free packed batches of "
    "batch_size sequences; time includes building the batch, the transfer, pooling and returning Python lists); "
    "transformers: AutoModel with sdpa attention (eager where transformers has no sdpa path), inputs sorted by "
    "length and cut into right-padded batches of batch_size with an attention mask; time includes building the "
    "padded tensors, the transfer to the device, the masked pooling, normalisation and the copy back to the CPU; "
    "both sides pool as the checkpoint's sentence-transformers files say (without them: CLS for encoders, "
    "last token for decoders, L2-normalised, as llmctl's embedder defaults); "
    "with --random-weights and --against, transformers' random tensors are copied into llmctl (handover); "
    "cosine = cosine similarity of the two sides' vectors on the first 64 inputs; "
    "peak GPU memory = torch.cuda.max_memory_allocated per side, measured from after the other side was freed"
)

EMBED_RATIO_KEYS = ("load_s", "sentences_per_s", "tokens_per_s")
DEFAULT_EMBED_BATCH_SIZE = 64
COSINE_INPUTS = 64


@dataclass
class EmbedSideResult:
    """Throughput of one implementation over the same inputs."""

    load_s: float
    sentences_per_s: float
    tokens_per_s: float
    elapsed_s: float
    num_sentences: int
    num_tokens: int
    peak_gpu_memory_gib: float | None = None


def embed_inputs(n: int, min_len: int, max_len: int, vocab_size: int, seed: int, avoid: int | None) -> list[list[int]]:
    """n token-id lists of lengths uniform in [min_len, max_len], ids uniform in the vocabulary minus `avoid`.

    The pad id is avoided because XLM-R style models derive positions from which ids are not padding.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=gen).tolist()
    span = vocab_size - (1 if avoid is not None and 0 <= avoid < vocab_size else 0)
    flat = torch.randint(0, span, (sum(lengths),), generator=gen)
    if span < vocab_size:
        flat = flat + (flat >= avoid).long()  # skip over the pad id
    out, start = [], 0
    for length in lengths:
        out.append(flat[start : start + length].tolist())
        start += length
    return out


def pool_padded(hidden, mask, pooling: str):
    """hidden (B, L, H) of right-padded sequences, mask (B, L) of 1 for real tokens -> (B, H), as
    sentence-transformers' Pooling does on a padded batch."""
    import torch

    lens = mask.sum(1)  # (B,)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "lasttoken":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lens - 1]
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    if pooling == "mean":
        return ((hidden.float() * m.float()).sum(1) / lens[:, None].float()).to(hidden.dtype)
    if pooling == "max":
        return hidden.masked_fill(m == 0, float("-inf")).amax(1)
    raise UsageError(f"unknown pooling {pooling!r}")


def _batches(inputs: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices sorted longest first, cut into groups of batch_size."""
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# -- transformers --------------------------------------------------------------------------------------


def build_hf_encoder(cfg: BenchConfig, path: Path, dtype, device, log: Callable[[str], None]):
    """(AutoModel, load seconds): random init on the device from config.json, or the checkpoint."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModel

    from llmctl.core.bench_transformers import sdpa_or_eager

    transformers.logging.set_verbosity_error()
    log("transformers: loading")
    t0 = clock(device)
    kw = {"dtype": dtype, "attn_implementation": sdpa_or_eager(AutoModel, path)}
    if cfg.random_weights:
        torch.manual_seed(cfg.seed)
        with torch.device(device):
            model = AutoModel.from_config(AutoConfig.from_pretrained(str(path)), **kw)
    else:
        model = AutoModel.from_pretrained(str(path), device_map={"": device}, **kw)
    model.eval()
    return model, clock(device) - t0


def bench_hf_embed(model, load_s, inputs, batch_size, pooling, normalize, device, log) -> tuple[EmbedSideResult, Any]:
    """Padded, length-sorted batches through the AutoModel: (result, the first COSINE_INPUTS vectors on the CPU)."""
    import torch

    from llmctl.core.engine.pooling import finish

    pad = getattr(model.config, "pad_token_id", None) or 0
    vectors: list[Any] = [None] * len(inputs)

    @torch.inference_mode()
    def run(items: list[list[int]]) -> None:
        for group in _batches(items, batch_size):
            width = max(len(items[i]) for i in group)
            ids = torch.full((len(group), width), pad, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, i in enumerate(group):
                ids[row, : len(items[i])] = torch.tensor(items[i])
                mask[row, : len(items[i])] = 1
            ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, H)
            pooled = finish(pool_padded(hidden, mask, pooling), normalize=normalize, dimensions=None).cpu()
            if items is inputs:
                for row, i in enumerate(group):
                    vectors[i] = pooled[row]

    log("transformers: warm-up")
    run(inputs[: 2 * batch_size])
    log(f"transformers: embedding {len(inputs)} inputs")
    t0 = clock(device)
    run(inputs)
    elapsed = clock(device) - t0
    tokens = sum(len(x) for x in inputs)
    result = EmbedSideResult(load_s, len(inputs) / elapsed, tokens / elapsed, elapsed, len(inputs), tokens,
                             peak_gpu_gib(device))  # fmt: skip
    return result, torch.stack(vectors[:COSINE_INPUTS])


# -- llmctl --------------------------------------------------------------------------------------------


def build_llmctl_embedder(cfg: BenchConfig, path: Path, device, state: dict | None, log: Callable[[str], None]):
    """LLM(task="embed") without a tokenizer (timed); `state` (transformers' tensors) copied over its weights."""
    from llmctl.core.engine.llm import LLM
    from llmctl.core.engine.loader import load_weights

    log("llmctl: loading")
    llm = LLM(
        str(path), task="embed", dtype=cfg.dtype, device=device, skip_tokenizer_init=True, seed=cfg.seed,
        load_format="dummy" if cfg.random_weights else "auto", max_model_len=cfg.max_model_len,
    )  # fmt: skip
    if state is not None:
        model = llm.embedder.model
        load_weights(model, state.items(), llm.dtype)  # the model's weights_mapper strips its prefixes
    return llm


def bench_llmctl_embed(llm, inputs, batch_size, pooling, normalize, device, log) -> tuple[EmbedSideResult, Any]:
    """llm.embed() over the token-id inputs: (result, the first COSINE_INPUTS vectors)."""
    import torch

    prompts = [{"prompt_token_ids": ids} for ids in inputs]
    kw = dict(pooling=pooling, normalize=normalize, batch_size=batch_size)
    log("llmctl: warm-up")
    llm.embed(prompts[: 2 * batch_size], **kw)
    log(f"llmctl: embedding {len(inputs)} inputs")
    t0 = clock(device)
    outs = llm.embed(prompts, **kw)
    elapsed = clock(device) - t0
    tokens = sum(len(o.prompt_token_ids) for o in outs)
    result = EmbedSideResult(llm.load_seconds, len(outs) / elapsed, tokens / elapsed, elapsed, len(outs), tokens,
                             peak_gpu_gib(device))  # fmt: skip
    return result, torch.tensor([o.outputs.embedding for o in outs[:COSINE_INPUTS]])


# -- the whole run -------------------------------------------------------------------------------------


def _embedding_settings(cfg: BenchConfig, path: Path, hf_config, model_cls):
    """(pooling, normalize, longest input) as llmctl's embedder will read them from the checkpoint."""
    from llmctl.core.engine.embedding_config import read_embedding_config

    max_positions = model_cls.max_positions(hf_config)
    if cfg.max_model_len is not None and not 1 <= cfg.max_model_len <= max_positions:
        raise UsageError(f"max_model_len={cfg.max_model_len} is outside the model's 1..{max_positions} positions")
    ec = read_embedding_config(path, hidden_size=hf_config.hidden_size, max_positions=max_positions,
                               is_causal=model_cls.is_causal)  # fmt: skip
    return ec.pooling, ec.normalize, cfg.max_model_len or ec.max_seq_length


def run_embed_bench(cfg: BenchConfig, path: Path, device, hf_config, dtype, model_cls, log) -> dict[str, Any]:
    """The embedding protocol (EMBED_PROTOCOL) for an embedding architecture; one JSON-ready dict."""
    import torch

    if path.is_file():
        raise UsageError("embedding benchmarks read an HF model folder, not a .gguf file")
    pooling, normalize, longest = _embedding_settings(cfg, path, hf_config, model_cls)
    hi = min(cfg.embed_max_len, longest)
    lo = min(cfg.embed_min_len, hi)
    batch_size = cfg.batch_size or DEFAULT_EMBED_BATCH_SIZE
    num_prompts = cfg.num_prompts or (10_000 if device.type == "cuda" else 4 * batch_size)
    inputs = embed_inputs(num_prompts, lo, hi, hf_config.vocab_size, cfg.seed, getattr(hf_config, "pad_token_id", None))

    hf_result = hf_vectors = state = attention = None
    if cfg.against == "transformers":
        _reset_peak(device)
        hf_model, load_s = build_hf_encoder(cfg, path, dtype, device, log)
        hf_result, hf_vectors = bench_hf_embed(hf_model, load_s, inputs, batch_size, pooling, normalize, device, log)
        attention = hf_model.config._attn_implementation
        # Checkpoints are read by both sides; random weights are handed over (state keeps them alive on the device
        # with handover="device" until llmctl has copied them).
        state = handover_state(hf_model, cfg.handover) if cfg.random_weights else None
        del hf_model
        gc.collect()
    _reset_peak(device)
    llm = build_llmctl_embedder(cfg, path, device, state, log)
    state = None
    _reset_peak(device)  # transformers' tensors are gone: the peak from here on is llmctl's own
    ours, our_vectors = bench_llmctl_embed(llm, inputs, batch_size, pooling, normalize, device, log)
    del llm
    gc.collect()

    result = {
        **environment(cfg, path, device, dtype, "embed"),
        "settings": settings(cfg, num_prompts=num_prompts, batch_size=batch_size, min_len=lo, max_len=hi,
                             pooling=pooling, normalize=normalize),
        "protocol": EMBED_PROTOCOL,
        "llmctl": asdict(ours),
        "transformers": None,
        "ratio_llmctl_over_transformers": None,
        "cosine_similarity": None,
        "transformers_attention": attention,
    }
    if hf_result is not None:
        result["transformers"] = asdict(hf_result)
        result["ratio_llmctl_over_transformers"] = {
            k: _ratio(getattr(ours, k), getattr(hf_result, k)) for k in EMBED_RATIO_KEYS
        }
        cos = torch.nn.functional.cosine_similarity(our_vectors.float(), hf_vectors.float(), dim=-1)
        result["cosine_similarity"] = {"min": cos.min().item(), "mean": cos.mean().item(), "inputs": len(cos)}
    return result
