"""Rope styles of other families against their transformers code: GPT-J (interleaved), GPT-NeoX / Phi / Phi-3
(partial rotary), Gemma-3 (per-layer-type parameters), Gemma-4 style proportional rope; plus dtype handling."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTJConfig, GPTNeoXConfig, LlamaConfig, Phi3Config, PhiConfig
from transformers.models.gemma3 import configuration_gemma3, modeling_gemma3
from transformers.models.gptj import modeling_gptj
from transformers.models.gpt_neox import modeling_gpt_neox
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.phi import modeling_phi
from transformers.models.phi3 import modeling_phi3

from llmctl.core.errors import ModelReadError, UnsupportedModelError
from llmctl.kernels.rotary import apply_rotary_ref
from llmctl.model_defs.layers.rotary import get_rope, get_rope_from_config

POSITIONS = torch.tensor([0, 1, 2, 33, 100, 511, 777, 1023])
NUM_HEADS, NUM_KV_HEADS = 4, 2
# The caches are the same float32 ops as transformers' (a few ulps of libm rounding at most); the
# rotated q/k (|x| ~ 4) carry that error times their magnitude.
COS_ATOL, QK_ATOL = 2e-6, 2e-5


@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (128, 64), (80, 32), (96, 96)])
@pytest.mark.parametrize("hub_form", [False, True])
def test_gptj_interleaved_partial(head_dim, rotary_dim, hub_form, h):
    hub = {"n_embd": head_dim * NUM_HEADS, "n_head": NUM_HEADS, "rotary_dim": rotary_dim, "n_positions": 1024}
    config = GPTJConfig(**hub)
    rope = get_rope_from_config(hub if hub_form else config, head_dim, is_neox_style=False)
    assert (rope.rotary_dim, rope.max_position) == (rotary_dim, 1024)

    sin, cos = modeling_gptj.GPTJRotaryEmbedding(config)(torch.zeros(1), POSITIONS[None])  # (1, T, rotary_dim / 2)
    ours_cos, ours_sin = rope.cos_sin_cache[POSITIONS].chunk(2, dim=-1)
    torch.testing.assert_close(ours_cos, cos[0], rtol=0, atol=COS_ATOL)
    torch.testing.assert_close(ours_sin, sin[0], rtol=0, atol=COS_ATOL)

    q, k = h.random_qk(len(POSITIONS), NUM_HEADS, NUM_HEADS, head_dim)
    q_out, k_out = rope(POSITIONS, q, k)
    for x, out in ((q, q_out), (k, k_out)):
        x4 = x.view(1, len(POSITIONS), NUM_HEADS, head_dim)  # GPT-J rotates (B, T, H, D)
        ref = torch.cat(
            (modeling_gptj.apply_rotary_pos_emb(x4[..., :rotary_dim], sin, cos), x4[..., rotary_dim:]), dim=-1
        )
        torch.testing.assert_close(out, ref.reshape(len(POSITIONS), -1), rtol=0, atol=QK_ATOL)


@pytest.mark.parametrize("head_dim,rotary_pct", [(64, 0.25), (80, 0.25), (128, 1.0), (96, 0.5)])
@pytest.mark.parametrize("hub_form", [False, True])
def test_gpt_neox_partial(head_dim, rotary_pct, hub_form, h):
    hub = {
        "hidden_size": head_dim * NUM_HEADS,
        "num_attention_heads": NUM_HEADS,
        "rotary_pct": rotary_pct,
        "rotary_emb_base": 20000,
        "max_position_embeddings": 1024,
    }
    config = GPTNeoXConfig(**hub)
    rope = get_rope_from_config(hub if hub_form else config, head_dim)
    assert rope.rotary_dim == int(head_dim * rotary_pct)

    hf_cos, hf_sin = h.hf_cos_sin(modeling_gpt_neox.GPTNeoXRotaryEmbedding(config), POSITIONS)
    q, k = h.random_qk(len(POSITIONS), NUM_HEADS, NUM_HEADS, head_dim)
    hf_q, hf_k = modeling_gpt_neox.apply_rotary_pos_emb(
        h.to_hf(q, head_dim), h.to_hf(k, head_dim), hf_cos[None], hf_sin[None]
    )
    q_out, k_out = rope(POSITIONS, q, k)
    torch.testing.assert_close(q_out, h.from_hf(hf_q), rtol=0, atol=QK_ATOL)
    torch.testing.assert_close(k_out, h.from_hf(hf_k), rtol=0, atol=QK_ATOL)


@pytest.mark.parametrize("head_dim", [64, 80])
@pytest.mark.parametrize("hub_form", [False, True])
def test_phi_partial(head_dim, hub_form, h):
    hub = {
        "hidden_size": head_dim * NUM_HEADS,
        "num_attention_heads": NUM_HEADS,
        "partial_rotary_factor": 0.5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
    }
    config = PhiConfig(**hub)
    rope = get_rope_from_config(hub if hub_form else config, head_dim)
    rot = head_dim // 2
    assert rope.rotary_dim == rot

    hf_cos, hf_sin = h.hf_cos_sin(modeling_phi.PhiRotaryEmbedding(config), POSITIONS)
    q, k = h.random_qk(len(POSITIONS), NUM_HEADS, NUM_HEADS, head_dim)
    hq, hk = h.to_hf(q, head_dim), h.to_hf(k, head_dim)
    # PhiAttention slices the rotary part itself and rotates it with the Llama-style function.
    hq_rot, hk_rot = modeling_phi.apply_rotary_pos_emb(hq[..., :rot], hk[..., :rot], hf_cos[None], hf_sin[None])
    q_out, k_out = rope(POSITIONS, q, k)
    torch.testing.assert_close(q_out, h.from_hf(torch.cat((hq_rot, hq[..., rot:]), -1)), rtol=0, atol=QK_ATOL)
    torch.testing.assert_close(k_out, h.from_hf(torch.cat((hk_rot, hk[..., rot:]), -1)), rtol=0, atol=QK_ATOL)


def test_phi3_longrope_partial(h):
    """Phi-4-mini style: longrope over the first 3/4 of a 128 head, original length at the top level."""
    head_dim, rot = 128, 96
    gen = torch.Generator().manual_seed(5)
    hub = {
        "hidden_size": head_dim * NUM_HEADS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "partial_rotary_factor": 0.75,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "original_max_position_embeddings": 512,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": (1 + torch.rand(rot // 2, generator=gen)).tolist(),
            "long_factor": (1 + 9 * torch.rand(rot // 2, generator=gen)).tolist(),
        },
    }
    config = Phi3Config(**{key: (dict(v) if isinstance(v, dict) else v) for key, v in hub.items()})
    for source in (hub, config):
        rope = get_rope_from_config(source, head_dim)
        assert (rope.rotary_dim, rope.rope_type, rope.max_position) == (rot, "longrope", 2048)
        for positions in (POSITIONS[POSITIONS < 512], torch.tensor([512]), torch.tensor([2047])):
            # transformers picks short or long from the call's seq_len; one call per side of the switch.
            hf_cos, hf_sin = h.hf_cos_sin(modeling_phi3.Phi3RotaryEmbedding(config), positions)
            q, k = h.random_qk(len(positions), NUM_HEADS, NUM_KV_HEADS, head_dim)
            hf_q, hf_k = modeling_phi3.apply_rotary_pos_emb(
                h.to_hf(q, head_dim), h.to_hf(k, head_dim), hf_cos[None], hf_sin[None]
            )
            q_out, k_out = rope(positions, q, k)
            atol = max(QK_ATOL, int(positions.max()) * 5e-7)  # 1-ulp frequency differences grow with the angle
            torch.testing.assert_close(q_out, h.from_hf(hf_q), rtol=0, atol=atol)
            torch.testing.assert_close(k_out, h.from_hf(hf_k), rtol=0, atol=atol)
    # Early Phi-3 configs call it "su" (transformers' Phi3Config renames it after it has failed to validate).
    su = get_rope_from_config({**hub, "rope_scaling": {**hub["rope_scaling"], "type": "su"}}, head_dim)
    assert su.rope_type == "longrope" and torch.equal(su.cos_sin_cache, rope.cos_sin_cache)


def test_gemma3_rope_parameters_nested_by_layer_type(h):
    config = configuration_gemma3.Gemma3TextConfig(
        hidden_size=256,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=64,
        num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=2048,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        rope_local_base_freq=10000.0,
    )
    hf_rope = modeling_gemma3.Gemma3RotaryEmbedding(config)
    caches = {}
    for layer_type in ("full_attention", "sliding_attention"):
        cos, sin = hf_rope(torch.zeros(1), POSITIONS[None], layer_type=layer_type)
        rope = get_rope_from_config(config, 64, layer_type=layer_type)
        ours_cos, ours_sin = h.llmctl_cos_sin(rope, POSITIONS)
        torch.testing.assert_close(ours_cos, cos[0], rtol=0, atol=COS_ATOL)
        torch.testing.assert_close(ours_sin, sin[0], rtol=0, atol=COS_ATOL)
        caches[layer_type] = rope
    assert caches["full_attention"].rope_type == "linear" and caches["sliding_attention"].rope_type == "default"
    with pytest.raises(UnsupportedModelError, match="per layer type"):
        get_rope_from_config(config, 64)  # a nested config without layer_type must not fall back silently


def test_proportional_rope(h):
    """Gemma-4 full-attention layers: a quarter of the head rotates, exponents taken over the whole head."""
    params = {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0}
    config = LlamaConfig(hidden_size=512, num_attention_heads=4, head_dim=128, rope_parameters=dict(params))
    rope = get_rope_from_config(config, 128)
    assert rope.rotary_dim == 128
    hf_cos, hf_sin = h.hf_cos_sin(LlamaRotaryEmbedding(config), POSITIONS)
    ours_cos, ours_sin = h.llmctl_cos_sin(rope, POSITIONS)
    torch.testing.assert_close(ours_cos, hf_cos, rtol=0, atol=COS_ATOL)
    torch.testing.assert_close(ours_sin, hf_sin, rtol=0, atol=COS_ATOL)
    q, _ = h.random_qk(len(POSITIONS), 4, 1, 128)
    q_out, _ = rope(POSITIONS, q, None)
    # The non-rotating pairs (i, i + 64) for i >= 16 pass through unchanged.
    q3, out3 = q.view(-1, 4, 128), q_out.view(-1, 4, 128)
    torch.testing.assert_close(out3[..., 16:64], q3[..., 16:64], rtol=0, atol=0)
    torch.testing.assert_close(out3[..., 80:], q3[..., 80:], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_rounds_like_transformers(dtype, h):
    """Rows are cast to q's dtype and rotated in it, op for op as transformers does: bit-identical.

    transformers gets the cos/sin of llmctl's cache (cast as LlamaRotaryEmbedding casts its own), so
    the comparison isolates the rotation's rounding from libm's last bit in the float32 angles.
    """
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64, max_position_embeddings=2048)
    rope = get_rope_from_config(config, 64)
    cos, sin = (x.to(dtype)[None] for x in h.llmctl_cos_sin(rope, POSITIONS))
    hf_cos, _ = LlamaRotaryEmbedding(config)(torch.zeros(1, dtype=dtype), POSITIONS[None])
    torch.testing.assert_close(cos, hf_cos, rtol=0, atol=8e-3)  # one bf16 ulp near 1.0
    q, k = h.random_qk(len(POSITIONS), 4, 2, 64, dtype=dtype)
    hf_q, hf_k = modeling_gpt_neox.apply_rotary_pos_emb(h.to_hf(q, 64), h.to_hf(k, 64), cos, sin)
    q_out, k_out = rope(POSITIONS, q, k)
    assert q_out.dtype == dtype and k_out.dtype == dtype
    torch.testing.assert_close(q_out, h.from_hf(hf_q), rtol=0, atol=0)
    torch.testing.assert_close(k_out, h.from_hf(hf_k), rtol=0, atol=0)


def test_module_moves_keep_the_cache_float32():
    rope = get_rope(64, 64, 256, 10000.0, None)
    model = torch.nn.ModuleList([torch.nn.Linear(2, 2), rope]).to(torch.bfloat16)
    assert model[0].weight.dtype == torch.bfloat16
    assert rope.cos_sin_cache.dtype == torch.float32
    assert get_rope(64, 64, 256, 10000.0, None) is rope
    assert get_rope(64, 64, 256, 10000.0, None, is_neox_style=False) is not rope
    model.to("meta")  # device moves do follow the module (meta stands in for cuda on this CPU-only CI)
    assert rope.cos_sin_cache.device.type == "meta" and rope.cos_sin_cache.dtype == torch.float32


def test_reference_accepts_head_shaped_inputs(h):
    rope = get_rope(80, 40, 1024, 10000.0, {"type": "linear", "factor": 2.0})
    q, k = h.random_qk(len(POSITIONS), 4, 2, 80)
    q_packed, k_packed = rope(POSITIONS, q, k)
    q3, k3 = apply_rotary_ref(
        q.view(-1, 4, 80), k.view(-1, 2, 80), POSITIONS, rope.cos_sin_cache, rope.rotary_dim, True
    )
    torch.testing.assert_close(q3.reshape(q.shape), q_packed, rtol=0, atol=0)
    torch.testing.assert_close(k3.reshape(k.shape), k_packed, rtol=0, atol=0)
    assert not torch.equal(q_packed, q)  # it did rotate
    torch.testing.assert_close(q_packed.view(-1, 4, 80)[..., 40:], q.view(-1, 4, 80)[..., 40:], rtol=0, atol=0)


def test_bad_rope_settings_raise_typed_errors():
    with pytest.raises(UnsupportedModelError, match="rope type"):
        get_rope(64, 64, 256, 10000.0, {"rope_type": "made-up"})
    with pytest.raises(UnsupportedModelError, match="rotary_dim"):
        get_rope(64, 33, 256, 10000.0, None)
    with pytest.raises(ModelReadError, match="factor"):
        get_rope(64, 64, 256, 10000.0, {"type": "linear"})
    with pytest.raises(ModelReadError, match="short_factor"):
        get_rope(64, 64, 256, 10000.0, {"type": "longrope", "short_factor": [1.0] * 3, "long_factor": [1.0] * 32})
    with pytest.raises(ModelReadError, match="max_position_embeddings"):
        get_rope_from_config({"rope_theta": 10000.0}, 64)
