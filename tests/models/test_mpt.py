"""Strict consistency of MPT (ALiBi with alibi_bias_max, no biases, fused Wqkv, clip_qkv) against transformers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from llmctl.model_defs import mpt
from llmctl.model_defs.layers.alibi import mpt_alibi_slopes

_spec = importlib.util.spec_from_file_location("f3_consistency", Path(__file__).with_name("f3_consistency.py"))
f3 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(f3)

# The architectures these tests hold to transformers; the registry test reads this list.
CONSISTENCY_ARCHITECTURES = ["MPTForCausalLM", "MptForCausalLM"]

_BASE = dict(vocab_size=320, n_layers=2, max_seq_len=64, bos_token_id=None, eos_token_id=None, pad_token_id=None)
# name -> (config kwargs, hub-style config.json keys): mosaicml configs name the class MPTForCausalLM.
CASES = {
    # mpt-7b style: 4 heads, alibi_bias_max 8, no clipping, hub architecture string.
    "mpt_7b": (dict(_BASE, d_model=64, n_heads=4, attn_config=dict(alibi_bias_max=8)),
               dict(architectures=["MPTForCausalLM"])),
    # 6 heads (MPT's odd/even slope reordering), clip_qkv and an explicit softmax_scale; as transformers saves it.
    "mpt_clip": (dict(_BASE, d_model=48, n_heads=6, attn_config=dict(clip_qkv=0.3, softmax_scale=0.3)), {}),
}  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    loaded: dict[str, tuple] = {}

    def get(name: str):
        if name not in loaded:
            kwargs, hub_keys = CASES[name]
            path = f3.make_checkpoint("MptConfig", kwargs, tmp_path_factory.mktemp(name), hub_keys, seed=len(name))
            ours, config = f3.load_ours(path, mpt)
            loaded[name] = (f3.load_hf(path), ours, config, path)
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


def test_alibi_slopes_match_transformers():
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    for num_heads in (1, 3, 4, 6, 7, 32, 56):  # mpt-30b has 56 heads
        # The bias of key 0 seen from the last of 2 positions is -slope.
        reference = -build_mpt_alibi_tensor(num_heads, 2)[:, 0, 0]
        torch.testing.assert_close(mpt_alibi_slopes(num_heads), reference, rtol=0, atol=0)
    assert not torch.equal(mpt_alibi_slopes(4, alibi_bias_max=16), mpt_alibi_slopes(4))


def test_clip_qkv_matters(pair, kit):
    """mpt_clip's projections exceed clip_qkv: without clipping the logits must differ from transformers'."""
    hf, ours, config, _ = pair("mpt_clip")
    prompt = f3.PROMPTS[0]
    drv = f3.driver(kit, ours, config, use_cache=False)
    attns = [block.attn for block in ours.transformer.blocks]
    assert all(a.clip_qkv == 0.3 for a in attns)
    try:
        for a in attns:
            a.clip_qkv = None
        with torch.inference_mode():
            seq = kit.Seq(tokens=list(prompt), prompt_len=len(prompt))
            unclipped = ours.compute_logits(drv.forward([(seq, len(prompt))]))
    finally:
        for a in attns:
            a.clip_qkv = 0.3
    assert not torch.allclose(unclipped, f3.hf_logits(hf, prompt), atol=1e-2)


def test_variants_follow_config(pair):
    _, ours, config, _ = pair("mpt_7b")
    assert type(ours) is mpt.MPTForCausalLM
    assert ours.lm_head.weight is ours.transformer.wte.weight
    block = ours.transformer.blocks[0]
    assert block.norm_1.bias is None and block.attn.Wqkv.bias is None and block.ffn.up_proj.bias is None
    assert block.attn.attn.scale == pytest.approx(16**-0.5)
    assert mpt.kv_cache_shape(config) == (2, 4, 16)
    _, clip, _, _ = pair("mpt_clip")
    assert type(clip) is mpt.MptForCausalLM and clip.transformer.blocks[0].attn.attn.scale == 0.3
