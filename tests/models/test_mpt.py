"""MPT beyond the strict checks of test_consistency.py: ALiBi slopes with alibi_bias_max, clip_qkv, the variants."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from llmctl.model_defs import mpt
from llmctl.model_defs.layers.alibi import mpt_alibi_slopes

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def test_alibi_slopes_match_transformers():
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    for num_heads in (1, 3, 4, 6, 7, 32, 56):  # mpt-30b has 56 heads
        # The bias of key 0 seen from the last of 2 positions is -slope.
        reference = -build_mpt_alibi_tensor(num_heads, 2)[:, 0, 0]
        torch.testing.assert_close(mpt_alibi_slopes(num_heads), reference, rtol=0, atol=0)
    assert not torch.equal(mpt_alibi_slopes(4, alibi_bias_max=16), mpt_alibi_slopes(4))


def test_clip_qkv_matters(bench):
    """mpt_clip's projections exceed clip_qkv: without clipping the logits must differ from transformers'."""
    _, ours, _ = bench.pair("mpt_clip")
    prompt = harness.PROMPTS[0]
    attns = [block.attn for block in ours.transformer.blocks]
    assert all(a.clip_qkv == 0.3 for a in attns)
    try:
        for a in attns:
            a.clip_qkv = None
        unclipped = harness.one_shot_logits(ours, prompt)
    finally:
        for a in attns:
            a.clip_qkv = 0.3
    assert not torch.allclose(unclipped, bench.hf_logits("mpt_clip", prompt), atol=1e-2)


def test_variants_follow_config(bench):
    _, ours, config = bench.pair("mpt_7b")
    assert type(ours) is mpt.MPTForCausalLM
    assert ours.lm_head.weight is ours.transformer.wte.weight
    block = ours.transformer.blocks[0]
    assert block.norm_1.bias is None and block.attn.Wqkv.bias is None and block.ffn.up_proj.bias is None
    assert block.attn.attn.scale == pytest.approx(16**-0.5)
    assert ours.kv_cache_shape() == (2, 4, 16)
    _, clip, _ = bench.pair("mpt_clip")
    assert type(clip) is mpt.MptForCausalLM and clip.transformer.blocks[0].attn.attn.scale == 0.3
