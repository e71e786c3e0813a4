"""Gemma, Gemma 2 and Gemma 3 (text) beyond the strict checks of test_consistency.py: per-layer windows,
soft-caps, local/global rotary, the (1 + w) norm and the embedding normalizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from llmctl.model_defs import gemma

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
WINDOW = 6  # the gemma2 / gemma3 cases' sliding_window (cases.py); test_variants_follow_config checks it


def test_variants_follow_config(bench):
    _, g1, g1_config = bench.pair("gemma")
    assert g1_config.hidden_act == "gelu_pytorch_tanh"  # transformers rewrote the legacy "gelu" too
    assert type(g1.model.layers[0].mlp.act_fn).__name__ == "GeluTanhAndMul"
    assert [layer.self_attn.attn.sliding_window for layer in g1.model.layers] == [None, None]
    assert g1.model.layers[0].self_attn.attn.scale == 32**-0.5
    assert g1.lm_head.weight is not g1.model.embed_tokens.weight
    assert g1.final_logit_softcapping is None
    assert g1.kv_cache_shape() == (2, 2, 32)

    _, g2, _ = bench.pair("gemma2")
    attn = [layer.self_attn.attn for layer in g2.model.layers]
    assert [a.sliding_window for a in attn] == [WINDOW, None, WINDOW]  # hub configs: even layers slide
    assert all(a.logit_softcap == 5.0 and a.scale == 24**-0.5 for a in attn)
    assert g2.final_logit_softcapping == 2.0
    assert g2.lm_head.weight is g2.model.embed_tokens.weight  # tied, the Gemma default

    _, g3, _ = bench.pair("gemma3")
    layers = g3.model.layers
    assert [layer.self_attn.attn.sliding_window for layer in layers] == [WINDOW, WINDOW, None]  # pattern 3
    assert all(layer.self_attn.attn.logit_softcap is None for layer in layers)
    local, global_ = layers[0].self_attn.rotary_emb, layers[2].self_attn.rotary_emb
    assert layers[1].self_attn.rotary_emb is local and global_ is not local
    assert local.rope_type == "default" and global_.rope_type == "linear"
    assert hasattr(layers[0].self_attn, "q_norm") and not hasattr(g2.model.layers[0].self_attn, "q_norm")
    assert bench.kv_cache_shape("gemma3") == (3, 2, 32)  # global and sliding layers share one cache shape


@pytest.mark.parametrize(
    "case, attribute, value",
    [
        ("gemma2", "sliding_window", None),
        ("gemma2", "logit_softcap", None),
        ("gemma3", "sliding_window", None),
    ],
)
def test_window_and_softcap_matter(bench, case, attribute, value):
    """The tiny configs exercise each feature: turning one off moves the logits far beyond TOL."""
    _, ours, _ = bench.pair(case)
    prompt = harness.PROMPTS[0]
    attns = [layer.self_attn.attn for layer in ours.model.layers]
    saved = [getattr(a, attribute) for a in attns]
    reference = harness.one_shot_logits(ours, prompt)
    try:
        for attn in attns:
            setattr(attn, attribute, value)
        changed = harness.one_shot_logits(ours, prompt)
    finally:
        for attn, old in zip(attns, saved):
            setattr(attn, attribute, old)
    if attribute == "sliding_window":  # positions < window see their whole context either way
        torch.testing.assert_close(reference[:WINDOW], changed[:WINDOW], **harness.TOL)
        reference, changed = reference[WINDOW:], changed[WINDOW:]
    assert (reference - changed).abs().max() > 1e-2


def test_final_softcap_bounds_the_logits(bench):
    _, ours, _ = bench.pair("gemma2")
    prompt = harness.PROMPTS[0]
    logits = harness.one_shot_logits(ours, prompt)
    assert logits.abs().max() < 2.0
    with torch.inference_mode():
        hidden = ours(torch.tensor(prompt), torch.arange(len(prompt)), harness.context_for(len(prompt)))
        raw = ours.lm_head(hidden)
    assert raw.abs().max() > 2.0  # the cap is what bounds them


def test_gemma_norm_matches_transformers_in_bfloat16():
    """(1 + w) multiplies in float32 before the cast, as transformers' GemmaRMSNorm: bit-equal in bf16."""
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm as HFGemmaRMSNorm

    from llmctl.model_defs.layers.gemma_norm import GemmaRMSNorm

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 48, generator=gen).to(torch.bfloat16)
    residual = torch.randn(7, 48, generator=gen).to(torch.bfloat16)
    weight = torch.randn(48, generator=gen) * 0.3
    hf, ours = HFGemmaRMSNorm(48, eps=1e-6), GemmaRMSNorm(48, eps=1e-6)
    with torch.no_grad():
        hf.weight.copy_(weight)
        ours.weight.copy_(weight)
    hf, ours = hf.to(torch.bfloat16), ours.to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(ours(x), hf(x))
        normed, summed = ours(x, residual)
        assert torch.equal(summed, residual + x)
        assert torch.equal(normed, hf(residual + x))


def test_embed_normalizer_rounds_to_the_dtype():
    # transformers' comment: sqrt(3072) = 55.4256 becomes 55.5 in bfloat16.
    assert gemma._embed_normalizer(3072, torch.bfloat16) == 55.5
    assert gemma._embed_normalizer(3072, torch.float32) == pytest.approx(3072**0.5, rel=1e-7)


def test_bidirectional_gemma3_is_refused(bench):
    import transformers

    from llmctl.core.errors import UnsupportedModelError

    kwargs = dict(bench.cases["gemma3"].kwargs, num_hidden_layers=2, use_bidirectional_attention=True)
    config = transformers.Gemma3TextConfig(**kwargs)
    with pytest.raises(UnsupportedModelError):
        gemma.Gemma3ForCausalLM(config)


def test_layer_types_fallback_without_layer_types():
    """Configs without layer_types (raw hub dicts) get each generation's documented pattern."""
    from types import SimpleNamespace

    S, F = gemma.SLIDING, gemma.FULL
    config = SimpleNamespace(num_hidden_layers=4)
    assert gemma.layer_types_of(config, gemma.GemmaForCausalLM.variant) == [F, F, F, F]
    assert gemma.layer_types_of(config, gemma.Gemma2ForCausalLM.variant) == [S, F, S, F]
    config = SimpleNamespace(num_hidden_layers=7)
    assert gemma.layer_types_of(config, gemma.Gemma3ForCausalLM.variant) == [S] * 5 + [F, S]
    config.sliding_window_pattern = 2
    assert gemma.layer_types_of(config, gemma.Gemma3ForCausalLM.variant) == [S, F, S, F, S, F, S]
