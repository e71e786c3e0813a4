"""Strict consistency of Phi-3 (checkpoint-fused qkv_proj / gate_up_proj, longrope, sliding window)."""

from __future__ import annotations

import pytest
import torch

# The architectures these tests hold to transformers; the registry test reads this list.
CONSISTENCY_ARCHITECTURES = ["Phi3ForCausalLM"]
NAMES = ["phi3"]
# float32 on CPU, same ops in a different order: see TOL in conftest.py.
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("use_cache", [True, False], ids=["paged", "no-cache"])
def test_prefill_logits_match_transformers(f2, name, use_cache):
    f2.checks.prefill(name, use_cache)


@pytest.mark.parametrize("name", NAMES)
def test_chunked_prefill_logits_match_transformers(f2, name):
    f2.checks.chunked_prefill(name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk_size", [None, 4], ids=["full-prefill", "chunked-prefill"])
def test_greedy_matches_transformers_generate(f2, name, chunk_size):
    """Prompts and their continuations (<= 27 tokens) stay within the original context (32): see phi3_long."""
    f2.checks.greedy(name, chunk_size)


def test_dummy_weights_run(f2):
    f2.checks.dummy_weights_run("phi3")


def test_structure_follows_config(f2):
    _, ours, _ = f2.pair("phi3")
    attn = ours.model.layers[0].self_attn
    assert [layer.self_attn.attn.sliding_window for layer in ours.model.layers] == [7, 7]
    assert (attn.rotary_emb.rope_type, attn.rotary_emb.rotary_dim) == ("longrope", 8)
    assert ours.lm_head.weight is not ours.model.embed_tokens.weight
    assert f2.checks.kv_cache_shape("phi3") == (2, 2, 16)


def test_fused_checkpoint_tensors_load_whole(f2):
    from safetensors import safe_open

    _, ours, _ = f2.pair("phi3")
    with safe_open(str(f2.checkpoint("phi3") / "model.safetensors"), "pt") as f:
        assert "model.layers.0.self_attn.q_proj.weight" not in f.keys()
        qkv = f.get_tensor("model.layers.0.self_attn.qkv_proj.weight")
        gate_up = f.get_tensor("model.layers.1.mlp.gate_up_proj.weight")
    assert torch.equal(ours.model.layers[0].self_attn.qkv_proj.weight, qkv)
    assert torch.equal(ours.model.layers[1].mlp.gate_up_proj.weight, gate_up)


def test_missing_fused_tensor_is_reported(f2):
    from llmctl.core.engine.loader import build_model, iter_safetensors
    from llmctl.core.errors import WeightLoadError

    _, _, config = f2.pair("phi3")
    weights = [(n, t) for n, t in iter_safetensors(f2.checkpoint("phi3")) if "layers.1.self_attn.qkv_proj" not in n]
    with pytest.raises(WeightLoadError, match="qkv_proj"):
        build_model(config, f2.model_class(config), torch.float32, "cpu", weights)


def test_decode_past_original_context_matches_transformers_step_by_step(f2, kit):
    """Past original_max_position_embeddings (12) each new token is rotated with the long factors while the
    cached keys stay as written: transformers' forward decoding one token at a time with its cache, exactly.

    (transformers' generate differs on purpose: Phi3ForCausalLM.prepare_inputs_for_generation drops the cache
    once, when the sequence first passes the original context, and re-prefills everything with the long
    factors. The paged engine does not re-prefill, so greedy tokens past that point may differ from generate.)
    """
    hf, ours, config = f2.pair("phi3_long")
    prompts = [p for p in f2.PROMPTS if len(p) <= 12]  # prompts within the original context: 11, 5 and 1 tokens
    assert any(len(p) + f2.MAX_NEW_TOKENS > 12 for p in prompts)
    seqs = kit.PagedDriver(ours, config, block_size=4).greedy(prompts, f2.MAX_NEW_TOKENS)
    for seq in seqs:
        with torch.no_grad():
            out = hf(torch.tensor([seq.tokens[: seq.prompt_len]]), use_cache=True)
            expected = [out.logits[0, -1]]
            for token in seq.tokens[seq.prompt_len : -1]:  # teacher-forced along our greedy tokens
                out = hf(torch.tensor([[token]]), cache=out.cache, use_cache=True)
                expected.append(out.logits[0, -1])
        expected = torch.log_softmax(torch.stack(expected).float(), dim=-1)
        torch.testing.assert_close(torch.stack(seq.logprobs), expected, **TOL)
