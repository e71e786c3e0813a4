"""GPT-NeoX beyond the strict checks of test_consistency.py: partial rotary, residual styles, per-head qkv."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def test_structure_follows_config(bench):
    _, parallel, _ = bench.pair("neox_parallel")
    _, sequential, _ = bench.pair("neox_sequential")
    assert [layer.use_parallel_residual for layer in parallel.gpt_neox.layers] == [True, True]
    assert [layer.use_parallel_residual for layer in sequential.gpt_neox.layers] == [False, False]
    assert parallel.gpt_neox.layers[0].attention.rotary_emb.rotary_dim == 4  # rotary_pct 0.25 of 16
    assert sequential.gpt_neox.layers[0].attention.rotary_emb.rotary_dim == 8  # rotary_pct 0.5
    assert sequential.gpt_neox.layers[0].attention.query_key_value.bias is None  # attention_bias False
    assert sequential.embed_out.weight is sequential.gpt_neox.embed_in.weight  # tied
    assert parallel.embed_out.weight is not parallel.gpt_neox.embed_in.weight
    assert bench.kv_cache_shape("neox_parallel") == (2, 4, 16)


def test_per_head_qkv_layout_matters(bench, monkeypatch):
    """Loading query_key_value without regrouping its per-head (nh, 3, hd) rows must fail the check."""
    from llmctl.model_defs.layers.layout_linear import HeadInterleavedQKVLinear

    monkeypatch.setattr(HeadInterleavedQKVLinear, "from_checkpoint_layout", lambda self, name, tensor: tensor)
    broken, _ = harness.load_ours(bench.checkpoint("neox_parallel"))
    with pytest.raises(AssertionError):
        bench.check_prefill("neox_parallel", use_cache=True, model=broken)
