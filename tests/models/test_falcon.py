"""Strict consistency of Falcon (multi-query, grouped new decoder architecture, ALiBi) against transformers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from llmctl.model_defs import falcon

_spec = importlib.util.spec_from_file_location("f3_consistency", Path(__file__).with_name("f3_consistency.py"))
f3 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(f3)

# The architectures these tests hold to transformers; the registry test reads this list.
CONSISTENCY_ARCHITECTURES = ["FalconForCausalLM"]

_BASE = dict(
    vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
    bos_token_id=None, eos_token_id=None,
)  # fmt: skip
# name -> (config kwargs, hub-style config.json keys); hub Falcon configs carry no rope_parameters.
CASES = {
    # falcon-7b style: one k/v head, parallel attention + MLP from one norm, no bias, rotary.
    "falcon_7b": (dict(_BASE, multi_query=True, parallel_attn=True), {}),
    # falcon-40b style: new decoder architecture, 2 k/v groups, ln_attn + ln_mlp, explicit rope_theta.
    "falcon_40b": (
        dict(_BASE, new_decoder_architecture=True, num_kv_heads=2, tie_word_embeddings=False),
        dict(rope_theta=500000.0),
    ),
    # New decoder architecture with one shared norm (num_ln_in_parallel_attn=1) and bias.
    "falcon_1ln": (
        dict(_BASE, new_decoder_architecture=True, num_kv_heads=1, num_ln_in_parallel_attn=1, bias=True),
        {},
    ),
    # falcon-rw style: ALiBi, all heads have k/v, sequential attention then MLP, bias.
    "falcon_rw": (dict(_BASE, alibi=True, multi_query=False, parallel_attn=False, bias=True), {}),
}


def _hf_attn_implementation(name: str) -> str:
    # transformers' eager Falcon adds the ALiBi bias twice (once itself, once inside the mask it built with
    # ALiBi folded in); its sdpa path adds it once, as the original falcon-rw code does: compare with sdpa.
    return "sdpa" if CASES[name][0].get("alibi") else "eager"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    loaded: dict[str, tuple] = {}

    def get(name: str):
        if name not in loaded:
            kwargs, hub_keys = CASES[name]
            out = tmp_path_factory.mktemp(name)
            path = f3.make_checkpoint("FalconConfig", kwargs, out, hub_keys, seed=len(name), drop=("rope_parameters",))
            ours, config = f3.load_ours(path, falcon)
            loaded[name] = (f3.load_hf(path, _hf_attn_implementation(name)), ours, config, path)
        return loaded[name]

    return get


_HF_GREEDY: dict = {}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("use_cache", [True, False], ids=["paged", "no-cache"])
def test_prefill_logits_match_transformers(pair, kit, case, use_cache):
    hf, ours, config, _ = pair(case)
    f3.check_prefill(kit, hf, ours, config, use_cache)


@pytest.mark.parametrize("case", sorted(CASES))
def test_chunked_prefill_logits_match_transformers(pair, kit, case):
    hf, ours, config, _ = pair(case)
    f3.check_chunked_prefill(kit, hf, ours, config)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk_size", [None, 4], ids=["full-prefill", "chunked-prefill"])
def test_greedy_matches_transformers_generate(pair, kit, case, chunk_size):
    hf, ours, config, _ = pair(case)
    f3.check_greedy(kit, hf, ours, config, chunk_size, _HF_GREEDY)


def test_kv_cache_shape_follows_the_attention(pair):
    """multi_query configs keep num_kv_heads = all heads; the cache must hold the one k/v head actually used."""
    from llmctl.core.engine.kv_cache import kv_cache_spec

    expected = {"falcon_7b": 1, "falcon_40b": 2, "falcon_1ln": 1, "falcon_rw": 4}
    for name, kv_heads in expected.items():
        _, ours, config, _ = pair(name)
        assert falcon.kv_cache_shape(config) == (2, kv_heads, 16)
        assert ours.transformer.h[0].self_attention.attn.num_kv_heads == kv_heads
        spec = kv_cache_spec(config, torch.float32, falcon.FalconForCausalLM)
        assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == (2, kv_heads, 16)


def test_variants_follow_config(pair):
    _, ours, _, _ = pair("falcon_40b")
    layer = ours.transformer.h[0]
    assert hasattr(layer, "ln_attn") and hasattr(layer, "ln_mlp") and not hasattr(layer, "input_layernorm")
    assert ours.lm_head.weight is not ours.transformer.word_embeddings.weight
    assert layer.self_attention.rotary_emb is not None and layer.self_attention.attn.alibi_slopes is None
    _, rw, _, _ = pair("falcon_rw")
    attn = rw.transformer.h[0].self_attention
    assert attn.rotary_emb is None and attn.attn.alibi_slopes is not None
    assert hasattr(rw.transformer.h[0], "post_attention_layernorm")
    _, one_ln, _, _ = pair("falcon_1ln")
    layer = one_ln.transformer.h[0]
    assert not hasattr(layer, "ln_attn") and layer.self_attention.dense.bias is not None


def test_eager_transformers_differs_for_alibi(pair):
    """The reason falcon_rw compares with sdpa: transformers' eager path disagrees with its own sdpa path."""
    hf_sdpa, _, _, path = pair("falcon_rw")
    hf_eager = f3.load_hf(path, "eager")
    prompt = f3.PROMPTS[0]
    assert not torch.allclose(f3.hf_logits(hf_eager, prompt), f3.hf_logits(hf_sdpa, prompt), atol=1e-3)


def test_llm_generate_sizes_the_cache_for_multi_query(pair, monkeypatch):
    """Through the real engine (registry lookup patched to this module): the cache takes kv_cache_shape's 1 head."""
    import llmctl.core.engine.llm as llm_module
    from llmctl import LLM, SamplingParams

    hf, _, _, path = pair("falcon_7b")
    monkeypatch.setattr(llm_module, "model_class", lambda architectures: getattr(falcon, architectures[0]))
    llm = LLM(
        str(path),
        dtype="float32",
        device="cpu",
        skip_tokenizer_init=True,
        block_size=4,
        max_num_batched_tokens=12,
        num_kv_blocks=64,
    )
    assert llm.llm_engine.runner.kv_caches[0].shape[-2:] == (1, 16)  # (2, blocks, block_size, kv_heads, head_dim)
    params = SamplingParams(temperature=0.0, max_tokens=f3.MAX_NEW_TOKENS, ignore_eos=True, logprobs=5)
    outs = llm.generate([{"prompt_token_ids": p} for p in f3.PROMPTS], params)
    for out, prompt in zip(outs, f3.PROMPTS):
        completion = out.outputs[0]
        hf_tokens, hf_logprobs = f3.hf_greedy(hf, prompt)
        assert len(completion.token_ids) == f3.MAX_NEW_TOKENS
        for step, (a, b) in enumerate(zip(completion.token_ids, hf_tokens)):
            if a != b:  # the top-5 rule, with the engine's own logprobs
                assert a in hf_logprobs[step].topk(5).indices.tolist()
                assert b in completion.logprobs[step]
                break
