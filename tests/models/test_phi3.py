"""Phi-3 beyond the strict checks of test_consistency.py: checkpoint-fused qkv_proj / gate_up_proj, longrope
past the original context, sliding window."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def test_structure_follows_config(bench):
    _, ours, _ = bench.pair("phi3")
    attn = ours.model.layers[0].self_attn
    assert [layer.self_attn.attn.sliding_window for layer in ours.model.layers] == [7, 7]
    assert (attn.rotary_emb.rope_type, attn.rotary_emb.rotary_dim) == ("longrope", 8)
    assert ours.lm_head.weight is not ours.model.embed_tokens.weight
    assert bench.kv_cache_shape("phi3") == (2, 2, 16)


def test_fused_checkpoint_tensors_load_whole(bench):
    from safetensors import safe_open

    _, ours, _ = bench.pair("phi3")
    with safe_open(str(bench.checkpoint("phi3") / "model.safetensors"), "pt") as f:
        assert "model.layers.0.self_attn.q_proj.weight" not in f.keys()
        qkv = f.get_tensor("model.layers.0.self_attn.qkv_proj.weight")
        gate_up = f.get_tensor("model.layers.1.mlp.gate_up_proj.weight")
    assert torch.equal(ours.model.layers[0].self_attn.qkv_proj.weight, qkv)
    assert torch.equal(ours.model.layers[1].mlp.gate_up_proj.weight, gate_up)


def test_missing_fused_tensor_is_reported(bench):
    from llmctl.core.engine.loader import build_model, iter_safetensors
    from llmctl.core.errors import WeightLoadError

    _, _, config = bench.pair("phi3")
    weights = [(n, t) for n, t in iter_safetensors(bench.checkpoint("phi3")) if "layers.1.self_attn.qkv_proj" not in n]
    with pytest.raises(WeightLoadError, match="qkv_proj"):
        build_model(config, harness.model_class(config), torch.float32, "cpu", weights)


def test_decode_past_original_context_matches_transformers_step_by_step(bench):
    """Past original_max_position_embeddings (12) each new token is rotated with the long factors while the
    cached keys stay as written: transformers' forward decoding one token at a time with its cache, exactly.

    (transformers' generate differs on purpose: Phi3ForCausalLM.prepare_inputs_for_generation drops the cache
    once, when the sequence first passes the original context, and re-prefills everything with the long
    factors. The paged engine does not re-prefill, so greedy tokens past that point may differ from generate.)
    """
    hf, ours, config = bench.pair("phi3_long")
    prompts = [p for p in harness.PROMPTS if len(p) <= 12]  # within the original context: 11, 5 and 1 tokens
    assert any(len(p) + harness.MAX_NEW_TOKENS > 12 for p in prompts)
    seqs = harness.PagedDriver(ours, config, block_size=4).greedy(prompts, harness.MAX_NEW_TOKENS)
    for seq in seqs:
        with torch.no_grad():
            out = hf(torch.tensor([seq.tokens[: seq.prompt_len]]), use_cache=True)
            expected = [out.logits[0, -1]]
            for token in seq.tokens[seq.prompt_len : -1]:  # teacher-forced along our greedy tokens
                out = hf(torch.tensor([[token]]), cache=out.cache, use_cache=True)
                expected.append(out.logits[0, -1])
        expected = torch.log_softmax(torch.stack(expected).float(), dim=-1)
        torch.testing.assert_close(torch.stack(seq.logprobs), expected, **harness.TOL)
