"""Tiny random GPT-2 / GPT-J / GPT-NeoX / Phi / Phi-3 checkpoints (config.json as hub checkpoints store it) and
the strict checks against transformers that every family test runs: packed prefill logits through the paged cache
(and without a cache), chunked prefill, greedy decode with full and chunked prefill under the top-5 rule.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

# Prompts of mixed lengths: the first is longer than Phi-3's window (7), one is a single token.
PROMPTS = [
    [11, 250, 7, 99, 3, 180, 42, 42, 5, 77, 123, 9, 300, 18, 64, 2, 201, 55, 8],
    [17],
    [4, 90, 260, 33, 71, 12, 150, 6, 19, 48, 222],
    [301, 2, 88, 140, 5],
]
MAX_NEW_TOKENS = 8
# float32 on CPU: both sides run the same math in a different order (einsum vs matmul, fused q|k|v projection,
# erf/tanh GELU from different kernels), so logits differ by a few ulps of values around 1; 1e-4 leaves room
# for that and nothing more.
TOL = dict(atol=1e-4, rtol=1e-4)

_COMMON = dict(vocab_size=320, bos_token_id=None, eos_token_id=None, pad_token_id=None)
_LLAMA_SHAPE = dict(
    hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96, max_position_embeddings=64
)
_PHI3_SHORT = [1.0, 1.25, 1.5, 2.0]  # one factor per rotated frequency (rotary_dim 8 -> 4)
_PHI3_LONG = [1.5, 2.0, 3.0, 4.0]

# name -> (transformers config class, config kwargs, keys written into config.json the way hub checkpoints do)
CASES: dict[str, tuple[str, dict, dict]] = {
    # gpt2: tied head, learned positions, gelu_new; n_inner None -> 4 * n_embd.
    "gpt2": ("GPT2Config", dict(n_embd=64, n_head=4, n_layer=2, n_positions=64), {}),
    # EleutherAI/gpt-j-6b style: rotary_dim 8 of head_dim 16, untied head with a bias.
    "gptj": ("GPTJConfig", dict(n_embd=64, n_head=4, n_layer=2, n_positions=64, rotary_dim=8), {}),
    # Pythia style: parallel residual, rotary_pct 0.25, biases everywhere.
    "neox_parallel": (
        "GPTNeoXConfig",
        dict(_LLAMA_SHAPE, use_parallel_residual=True),
        dict(rotary_pct=0.25, rotary_emb_base=10000),
    ),
    # Sequential residual, half the head rotated, no attention bias, tied head.
    "neox_sequential": (
        "GPTNeoXConfig",
        dict(_LLAMA_SHAPE, use_parallel_residual=False, attention_bias=False, tie_word_embeddings=True),
        dict(rotary_pct=0.5, rotary_emb_base=1000),
    ),
    # microsoft/phi-2 style: partial_rotary_factor, rope_theta at the top level, lm_head bias.
    "phi": ("PhiConfig", dict(_LLAMA_SHAPE), dict(partial_rotary_factor=0.5, rope_theta=10000.0)),
    # qk_layernorm (Phi-1.5 style option) with grouped KV heads.
    "phi_qk_gqa": (
        "PhiConfig",
        dict(_LLAMA_SHAPE, num_key_value_heads=2, qk_layernorm=True),
        dict(partial_rotary_factor=0.75, rope_theta=10000.0),
    ),
    # Phi-3.5 / Phi-4-mini style: longrope with a top-level original context (32) that prompts and greedy decode
    # stay within (see phi3_long), partial rotary, grouped KV heads, sliding window 7 on every layer.
    "phi3": (
        "Phi3Config",
        dict(_LLAMA_SHAPE, num_key_value_heads=2, sliding_window=7, original_max_position_embeddings=32),
        dict(
            rope_theta=10000.0,
            partial_rotary_factor=0.5,
            original_max_position_embeddings=32,
            rope_scaling=dict(type="longrope", short_factor=_PHI3_SHORT, long_factor=_PHI3_LONG),
        ),
    ),
    # The same with an original context of 12 that decoding crosses onto the long factors.
    "phi3_long": (
        "Phi3Config",
        dict(_LLAMA_SHAPE, num_key_value_heads=2, sliding_window=7, original_max_position_embeddings=12),
        dict(
            rope_theta=10000.0,
            partial_rotary_factor=0.5,
            original_max_position_embeddings=12,
            rope_scaling=dict(type="longrope", short_factor=_PHI3_SHORT, long_factor=_PHI3_LONG),
        ),
    ),
}

MODULES = {
    "GPT2LMHeadModel": "gpt2",
    "GPTJForCausalLM": "gptj",
    "GPTNeoXForCausalLM": "gpt_neox",
    "PhiForCausalLM": "phi",
    "Phi3ForCausalLM": "phi3",
}


def _to_hub_style(config_path: Path, hub_keys: dict) -> None:
    """Rewrite a transformers-5 config.json as hub checkpoints store it: old rope keys, torch_dtype."""
    data = json.loads(config_path.read_text())
    if hub_keys:
        data.pop("rope_parameters", None)
    data.update(hub_keys)
    data["torch_dtype"] = data.pop("dtype", None) or "float32"
    config_path.write_text(json.dumps(data, indent=2))


def make_checkpoint(name: str, out_dir: Path) -> Path:
    import transformers

    torch.manual_seed(sum(map(ord, name)))
    cls_name, kwargs, hub_keys = CASES[name]
    config_kwargs = {**_COMMON, **kwargs}
    if "rope_theta" in hub_keys:  # Phi / Phi-3: transformers-5 takes these as rope_parameters
        scaling = dict(hub_keys.get("rope_scaling") or {})
        rope_type = scaling.pop("type", "default")
        config_kwargs["rope_parameters"] = dict(
            scaling,
            rope_type=rope_type,
            rope_theta=hub_keys["rope_theta"],
            partial_rotary_factor=hub_keys["partial_rotary_factor"],
        )
    else:
        config_kwargs.update(hub_keys)  # GPTNeoXConfig still takes rotary_pct / rotary_emb_base
    config = getattr(transformers, cls_name)(**config_kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # HF init leaves biases 0 and norms 1: perturb everything so each weight matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    _to_hub_style(out_dir / "config.json", hub_keys)
    return out_dir


def load_hf(path: Path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def model_class(config):
    module = importlib.import_module(f"llmctl.model_defs.{MODULES[config.architectures[0]]}")
    return getattr(module, config.architectures[0])


def load_ours(path: Path):
    import transformers

    from llmctl.core.engine.loader import build_model, iter_safetensors

    config = transformers.AutoConfig.from_pretrained(path)
    return build_model(config, model_class(config), torch.float32, "cpu", iter_safetensors(path)), config


def _hf_logits(hf, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([prompt])).logits[0].float()  # (len, V)


def _run_hf_greedy(hf, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
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


class Checks:
    """The strict checks, each for one case name; models and HF greedy runs are built once per session."""

    def __init__(self, kit, tmp_path_factory):
        self.kit = kit
        self.tmp = tmp_path_factory
        self.paths: dict[str, Path] = {}
        self.pairs: dict[str, tuple] = {}
        self.greedy_memo: dict[tuple[str, tuple[int, ...]], tuple] = {}

    def checkpoint(self, name: str) -> Path:
        if name not in self.paths:
            self.paths[name] = make_checkpoint(name, self.tmp.mktemp(name))
        return self.paths[name]

    def pair(self, name: str):
        """(transformers model, our model, hf config)."""
        if name not in self.pairs:
            path = self.checkpoint(name)
            ours, config = load_ours(path)
            self.pairs[name] = (load_hf(path), ours, config)
        return self.pairs[name]

    def hf_greedy(self, name: str, prompt: list[int]):
        key = (name, tuple(prompt))
        if key not in self.greedy_memo:
            self.greedy_memo[key] = _run_hf_greedy(self.pair(name)[0], prompt)
        return self.greedy_memo[key]

    def prefill(self, name: str, use_cache: bool, model=None) -> None:
        """All prompts in one packed batch; every position's logits equal transformers' one-prompt forward."""
        hf, ours, config = self.pair(name)
        model = model or ours
        driver = self.kit.PagedDriver(model, config, use_cache=use_cache)
        seqs = [self.kit.Seq(tokens=list(p), prompt_len=len(p)) for p in PROMPTS]
        with torch.inference_mode():
            logits = model.compute_logits(driver.forward([(s, len(s.tokens)) for s in seqs])).float()
        start = 0
        for prompt in PROMPTS:
            torch.testing.assert_close(logits[start : start + len(prompt)], _hf_logits(hf, prompt), **TOL)
            start += len(prompt)

    def chunked_prefill(self, name: str) -> None:
        """Prompts prefilled 3 tokens a step, all in one batch: every position's logits equal a one-shot forward."""
        hf, ours, config = self.pair(name)
        driver = self.kit.PagedDriver(ours, config, block_size=4)
        seqs = [self.kit.Seq(tokens=list(p), prompt_len=len(p)) for p in PROMPTS]
        collected = {id(s): [] for s in seqs}
        while active := [s for s in seqs if s.computed < len(s.tokens)]:
            batch = [(s, min(3, len(s.tokens) - s.computed)) for s in active]
            with torch.inference_mode():
                logits = ours.compute_logits(driver.forward(batch)).float()
            start = 0
            for seq, n in batch:
                collected[id(seq)].append(logits[start : start + n])
                start += n
        for seq in seqs:
            torch.testing.assert_close(torch.cat(collected[id(seq)]), _hf_logits(hf, seq.tokens), **TOL)

    def kv_cache_shape(self, name: str) -> tuple[int, int, int]:
        """The family's kv_cache_shape(config); the engine's kv_cache_spec must size the cache the same."""
        from llmctl.core.engine.kv_cache import kv_cache_spec

        _, _, config = self.pair(name)
        family = importlib.import_module(f"llmctl.model_defs.{MODULES[config.architectures[0]]}")
        shape = family.kv_cache_shape(config)
        spec = kv_cache_spec(config, torch.float32, model_class(config))
        assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == shape
        return shape

    def dummy_weights_run(self, name: str) -> None:
        """load_format="dummy": random weights (norms at 1 / 0) give finite, non-constant logits through the cache."""
        from llmctl.core.engine.loader import build_model

        _, _, config = self.pair(name)
        model = build_model(config, model_class(config), torch.float32, "cpu", None)
        for module in model.modules():
            if module.__class__.__name__.endswith("LayerNorm") or module.__class__.__name__ == "RMSNorm":
                assert torch.all(module.weight == 1.0)
        driver = self.kit.PagedDriver(model, config)
        seq = self.kit.Seq(tokens=list(PROMPTS[0]), prompt_len=len(PROMPTS[0]))
        with torch.inference_mode():
            logits = model.compute_logits(driver.forward([(seq, len(seq.tokens))]))
        assert torch.isfinite(logits).all() and logits.std() > 0

    def greedy(self, name: str, chunk_size: int | None) -> None:
        """Continuous-batching greedy decode through the paged cache against HF generate (top-5 rule)."""
        _, ours, config = self.pair(name)
        driver = self.kit.PagedDriver(ours, config, block_size=4)
        seqs = driver.greedy(PROMPTS, MAX_NEW_TOKENS, chunk_size=chunk_size)
        for seq, prompt in zip(seqs, PROMPTS):
            check_greedy_close(seq, *self.hf_greedy(name, prompt))


@pytest.fixture(scope="session")
def f2(kit, tmp_path_factory):
    """Strict checks and helpers for the GPT-2 / GPT-J / GPT-NeoX / Phi / Phi-3 tests."""
    checks = Checks(kit, tmp_path_factory)
    return SimpleNamespace(
        checks=checks,
        pair=checks.pair,
        checkpoint=checks.checkpoint,
        load_ours=load_ours,
        model_class=model_class,
        check_greedy_close=check_greedy_close,
        PROMPTS=PROMPTS,
        MAX_NEW_TOKENS=MAX_NEW_TOKENS,
        CASES=CASES,
    )
