"""Shared strict-consistency checks for the OPT / BLOOM / Falcon / MPT tests (loaded by path: not a test module)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Mixed lengths: one of a single token, the longest past every window these tests use.
PROMPTS = [
    [11, 250, 7, 99, 3, 180, 42, 42, 5, 77, 123, 9, 300, 18, 64, 2, 201, 55, 8],
    [17],
    [4, 90, 260, 33, 71, 12, 150, 6, 19, 48, 222],
    [301, 2, 88, 140, 5],
]
MAX_NEW_TOKENS = 8
# float32 on CPU: both sides run the same math in another order (packed einsum vs batched matmul, ALiBi
# as slope * (key - query) vs slope * key, q pre-scaled in OPT), so logits of size ~1-10 differ by a few
# ulps; 1e-4 leaves room for that and nothing more.
TOL = dict(atol=1e-4, rtol=1e-4)


def make_checkpoint(
    config_cls: str, kwargs: dict, out_dir: Path, hub_keys: dict | None = None, seed: int = 0, drop: tuple = ()
) -> Path:
    """Save a tiny random float32 checkpoint; config.json then loses `drop` and takes hub_keys (as on the hub)."""
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # HF init leaves biases 0 and norms 1: perturb everything so each weight matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    path = out_dir / "config.json"
    data = json.loads(path.read_text())
    data["torch_dtype"] = data.pop("dtype", None) or "float32"
    for key in drop:
        data.pop(key, None)
    data.update(hub_keys or {})
    path.write_text(json.dumps(data, indent=2))
    return out_dir


def load_hf(path: Path, attn_implementation: str = "eager"):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=attn_implementation
    )
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def load_ours(path: Path, module):
    import transformers

    from llmctl.core.engine.loader import build_model, iter_safetensors

    config = transformers.AutoConfig.from_pretrained(path)
    model_cls = getattr(module, config.architectures[0])
    return build_model(config, model_cls, torch.float32, "cpu", iter_safetensors(path)), config


def driver(kit, model, config, **kwargs):
    """kit.PagedDriver with the cache shaped by the model's own kv_cache_shape (Falcon: multi-query)."""
    drv = kit.PagedDriver(model, config, **kwargs)
    if drv.kv_caches is not None:
        num_layers, num_kv_heads, head_dim = type(model).kv_cache_shape(config)
        first = drv.kv_caches[0]
        shape = (2, first.shape[1], first.shape[2], num_kv_heads, head_dim)
        drv.kv_caches = [torch.zeros(shape, dtype=first.dtype) for _ in range(num_layers)]
    return drv


def hf_logits(hf, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([prompt])).logits[0].float()  # (len, V)


def hf_greedy(hf, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    return tokens, [torch.log_softmax(step[0].float(), dim=-1) for step in out.logits]


def check_greedy_close(ours, hf_tokens: list[int], hf_logprobs: list[torch.Tensor], k: int = 5) -> None:
    """Tokens must match; at the first divergence each side's token must be in the other's top-k (vLLM's rule)."""
    ours_tokens = ours.tokens[ours.prompt_len :]
    assert len(ours_tokens) == len(hf_tokens) == MAX_NEW_TOKENS
    for step, (a, b) in enumerate(zip(ours_tokens, hf_tokens)):
        if a != b:
            assert a in hf_logprobs[step].topk(k).indices.tolist(), f"step {step}: our {a} not in HF top-{k}"
            assert b in ours.logprobs[step].topk(k).indices.tolist(), f"step {step}: HF {b} not in our top-{k}"
            return


def check_prefill(kit, hf, ours, config, use_cache: bool) -> None:
    """All prompts packed in one batch (through the paged cache or not): logits equal HF's per prompt."""
    drv = driver(kit, ours, config, use_cache=use_cache)
    seqs = [kit.Seq(tokens=list(p), prompt_len=len(p)) for p in PROMPTS]
    with torch.inference_mode():
        logits = ours.compute_logits(drv.forward([(s, len(s.tokens)) for s in seqs])).float()
    start = 0
    for prompt in PROMPTS:
        torch.testing.assert_close(logits[start : start + len(prompt)], hf_logits(hf, prompt), **TOL)
        start += len(prompt)


def check_chunked_prefill(kit, hf, ours, config, chunk: int = 3) -> None:
    """Prompts prefilled `chunk` tokens a step, all in one batch: every position's logits equal HF's."""
    drv = driver(kit, ours, config, block_size=4)
    seqs = [kit.Seq(tokens=list(p), prompt_len=len(p)) for p in PROMPTS]
    collected = {id(s): [] for s in seqs}
    while active := [s for s in seqs if s.computed < len(s.tokens)]:
        batch = [(s, min(chunk, len(s.tokens) - s.computed)) for s in active]
        with torch.inference_mode():
            logits = ours.compute_logits(drv.forward(batch)).float()
        start = 0
        for seq, n in batch:
            collected[id(seq)].append(logits[start : start + n])
            start += n
    for seq in seqs:
        torch.testing.assert_close(torch.cat(collected[id(seq)]), hf_logits(hf, seq.tokens), **TOL)


def check_greedy(kit, hf, ours, config, chunk_size: int | None, hf_cache: dict) -> None:
    """Continuous-batching greedy decode (optionally with chunked prefill) against HF generate, top-5 rule."""
    drv = driver(kit, ours, config, block_size=4)
    seqs = drv.greedy(PROMPTS, MAX_NEW_TOKENS, chunk_size=chunk_size)
    for seq, prompt in zip(seqs, PROMPTS):
        key = (id(hf), tuple(prompt))
        if key not in hf_cache:
            hf_cache[key] = hf_greedy(hf, prompt)
        check_greedy_close(seq, *hf_cache[key])
