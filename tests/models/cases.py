"""The tiny random checkpoints of tests/models, one or more per architecture (loaded by path: not a test module).

Each case is a transformers config class with kwargs, plus how its saved config.json is rewritten to look like
the hub checkpoint it imitates (hub files predate transformers 5's rope_parameters / layer_types).
"""

# No `from __future__ import annotations`: loaded by path (see harness.py).

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    config_class: str  # transformers config class name
    kwargs: dict
    hub_keys: dict = field(default_factory=dict)  # written into config.json as hub checkpoints store them
    drop: tuple[str, ...] = ()  # transformers-5 keys hub files lack, removed from config.json
    hf_attention: str = "eager"  # transformers' attention implementation to compare with
    strict: bool = True  # False: built for one family test only, not run through the strict checks
    # A hub layout (remote_layouts.py) the saved checkpoint is rewritten into: llmctl loads the rewritten one,
    # transformers the saved one, its reference. layout_keys: config.json keys of the rewritten file (None: left out).
    layout: str | None = None
    layout_keys: dict = field(default_factory=dict)


_ROPE = ("rope_parameters",)
_NO_SPECIAL = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)

# --- Llama family (Llama, Mistral, Qwen2, Qwen3) ----------------------------------------------------------------
_LLAMA = dict(_NO_SPECIAL, vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)
LLAMA = {
    # Llama 3.1-style: llama3 rope scaling, head_dim (32) != hidden / heads (16), untied head.
    "llama3": Case("LlamaConfig", dict(_LLAMA, head_dim=32, tie_word_embeddings=False), dict(
        rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0, original_max_position_embeddings=16)), _ROPE),
    # SmolLM2-style: tied embeddings, multi-query attention, plain rope.
    "llama_tied": Case("LlamaConfig", dict(_LLAMA, num_key_value_heads=1, tie_word_embeddings=True),
                       dict(rope_theta=100000.0, rope_scaling=None), _ROPE),
    # Sliding window (7) shorter than the longer prompts.
    "mistral": Case("MistralConfig", dict(_LLAMA, sliding_window=7, tie_word_embeddings=False),
                    dict(rope_theta=10000.0), _ROPE),
    # q/k/v bias, tied embeddings.
    "qwen2": Case("Qwen2Config", dict(_LLAMA, tie_word_embeddings=True),
                  dict(rope_theta=1000000.0, rope_scaling=None), _ROPE),
    # q_norm/k_norm, head_dim 32, layer 1 sliding (window 6) through use_sliding_window + max_window_layers.
    "qwen3": Case("Qwen3Config", dict(_LLAMA, head_dim=32, tie_word_embeddings=False, use_sliding_window=True,
                                      sliding_window=6, max_window_layers=1),
                  dict(rope_theta=1000000.0, rope_scaling=None), _ROPE),
}  # fmt: skip

# --- Gemma, Gemma 2, Gemma 3 (text) ---------------------------------------------------------------------------
GEMMA_WINDOW = 6
_GEMMA = dict(_NO_SPECIAL, vocab_size=320, hidden_size=64, intermediate_size=96, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
              head_dim=32)  # != hidden / heads (16), as in gemma-7b (3072 / 16 heads, head_dim 256)
_GEMMA_DROP = ("rope_parameters", "layer_types")
GEMMA = {
    # google/gemma-2b style: legacy hidden_act "gelu" (meaning tanh), rope_theta at top level; untied head
    # here so that the untied path is exercised too.
    "gemma": Case("GemmaConfig", dict(_GEMMA, num_hidden_layers=2, tie_word_embeddings=False),
                  dict(hidden_act="gelu", rope_theta=10000.0, rope_scaling=None), _GEMMA_DROP),
    # google/gemma-2-2b style: no layer_types (even layers slide), query_pre_attn_scalar != head_dim,
    # soft-caps small enough to bite on these random weights.
    "gemma2": Case("Gemma2Config", dict(_GEMMA, num_hidden_layers=3, sliding_window=GEMMA_WINDOW,
                                        query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                                        final_logit_softcapping=2.0),
                   dict(hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh", rope_theta=10000.0,
                        cache_implementation="hybrid"), _GEMMA_DROP),
    # google/gemma-3-1b-it style (model_type gemma3_text): sliding_window_pattern instead of layer_types,
    # rope_local_base_freq for the local layers; linear rope scaling on the global ones as gemma-3-4b has.
    "gemma3": Case("Gemma3TextConfig", dict(_GEMMA, num_hidden_layers=3, sliding_window=GEMMA_WINDOW,
                                            query_pre_attn_scalar=24, final_logit_softcapping=None),
                   dict(rope_theta=1000000.0, rope_local_base_freq=10000.0,
                        rope_scaling=dict(rope_type="linear", factor=8.0), sliding_window_pattern=3), _GEMMA_DROP),
}  # fmt: skip

# --- GPT-2, GPT-J, GPT-NeoX, Phi, Phi-3 -----------------------------------------------------------------------
_GPT = dict(_NO_SPECIAL, vocab_size=320, n_embd=64, n_head=4, n_layer=2, n_positions=64)
_SHAPE = dict(_NO_SPECIAL, vocab_size=320, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
              intermediate_size=96, max_position_embeddings=64)
_PHI3_SHORT = [1.0, 1.25, 1.5, 2.0]  # one factor per rotated frequency (rotary_dim 8 -> 4)
_PHI3_LONG = [1.5, 2.0, 3.0, 4.0]


def _neox(rotary_pct: float, base: int, **kwargs) -> Case:
    # GPTNeoXConfig still takes the hub's rotary_pct / rotary_emb_base
    keys = dict(rotary_pct=rotary_pct, rotary_emb_base=base)
    return Case("GPTNeoXConfig", dict(_SHAPE, **kwargs, **keys), keys, _ROPE)


def _phi(config_class: str, partial: float, scaling: dict | None = None, **kwargs) -> Case:
    """Phi / Phi-3: transformers 5 takes rope_parameters; the hub stores rope_theta, partial_rotary_factor."""
    scaling = dict(scaling or {})
    rope = dict(scaling, rope_type=scaling.pop("type", "default"), rope_theta=10000.0, partial_rotary_factor=partial)
    hub = dict(rope_theta=10000.0, partial_rotary_factor=partial)
    if scaling:
        hub.update(rope_scaling=dict(scaling, type=rope["rope_type"]))
    if "original_max_position_embeddings" in kwargs:
        hub["original_max_position_embeddings"] = kwargs["original_max_position_embeddings"]
    return Case(config_class, dict(_SHAPE, **kwargs, rope_parameters=rope), hub, _ROPE)


def _phi3(original_context: int, strict: bool = True) -> Case:
    # Phi-3.5 / Phi-4-mini style: longrope with a top-level original context, partial rotary, grouped KV heads,
    # sliding window 7 on every layer.
    case = _phi("Phi3Config", 0.5, dict(type="longrope", short_factor=_PHI3_SHORT, long_factor=_PHI3_LONG),
                num_key_value_heads=2, sliding_window=7, original_max_position_embeddings=original_context)
    return Case(case.config_class, case.kwargs, case.hub_keys, case.drop, strict=strict)


GPT_PHI = {
    # gpt2: tied head, learned positions, gelu_new; n_inner None -> 4 * n_embd.
    "gpt2": Case("GPT2Config", _GPT),
    # EleutherAI/gpt-j-6b style: rotary_dim 8 of head_dim 16, untied head with a bias.
    "gptj": Case("GPTJConfig", dict(_GPT, rotary_dim=8)),
    # Pythia style: parallel residual, rotary_pct 0.25, biases everywhere.
    "neox_parallel": _neox(0.25, 10000, use_parallel_residual=True),
    # Sequential residual, half the head rotated, no attention bias, tied head.
    "neox_sequential": _neox(0.5, 1000, use_parallel_residual=False, attention_bias=False, tie_word_embeddings=True),
    # microsoft/phi-2 style: partial_rotary_factor, rope_theta at the top level, lm_head bias.
    "phi": _phi("PhiConfig", 0.5),
    # qk_layernorm (Phi-1.5 style option) with grouped KV heads.
    "phi_qk_gqa": _phi("PhiConfig", 0.75, num_key_value_heads=2, qk_layernorm=True),
    # Prompts and greedy continuations (<= 27 tokens) stay within the original context (32).
    "phi3": _phi3(32),
    # An original context of 12 that decoding crosses onto the long factors, where transformers' generate
    # re-prefills on purpose: only test_phi3's step-by-step decode compares it.
    "phi3_long": _phi3(12, strict=False),
}

# --- OPT, BLOOM, Falcon, MPT ----------------------------------------------------------------------------------
_OPT = dict(vocab_size=320, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=1)
_BLOOM = dict(vocab_size=320, n_layer=2, layer_norm_epsilon=1e-5, bos_token_id=None, eos_token_id=None, pad_token_id=3)
_FALCON = dict(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
               bos_token_id=None, eos_token_id=None)
_MPT = dict(_NO_SPECIAL, vocab_size=320, n_layers=2, max_seq_len=64)
ALIBI_FAMILIES = {
    # opt-125m style: layer norm before attention / MLP, final norm, tied head, relu.
    "opt": Case("OPTConfig", dict(_OPT, do_layer_norm_before=True)),
    # opt-350m style: post-norm, no final norm, 32-dim word embeddings projected in and out.
    "opt_350m": Case("OPTConfig", dict(_OPT, do_layer_norm_before=False, word_embed_proj_dim=32)),
    # Untied head, no bias anywhere (enable_bias=False) and norms without weights (metaseq conversions).
    "opt_nobias": Case("OPTConfig", dict(_OPT, enable_bias=False, layer_norm_elementwise_affine=False,
                                         tie_word_embeddings=False)),
    # bloom-560m style: 4 heads (power-of-two slopes), tied head.
    "bloom": Case("BloomConfig", dict(_BLOOM, hidden_size=64, n_head=4)),
    # 6 heads take the extra odd-power slopes; residual from the normalised input; untied head.
    "bloom_6heads": Case("BloomConfig", dict(_BLOOM, hidden_size=48, n_head=6, tie_word_embeddings=False,
                                             apply_residual_connection_post_layernorm=True)),
    # falcon-7b style: one k/v head, parallel attention + MLP from one norm, no bias, rotary.
    "falcon_7b": Case("FalconConfig", dict(_FALCON, multi_query=True, parallel_attn=True), drop=_ROPE),
    # falcon-40b style: new decoder architecture, 2 k/v groups, ln_attn + ln_mlp, explicit rope_theta.
    "falcon_40b": Case("FalconConfig", dict(_FALCON, new_decoder_architecture=True, num_kv_heads=2,
                                            tie_word_embeddings=False), dict(rope_theta=500000.0), _ROPE),
    # New decoder architecture with one shared norm (num_ln_in_parallel_attn=1) and bias.
    "falcon_1ln": Case("FalconConfig", dict(_FALCON, new_decoder_architecture=True, num_kv_heads=1,
                                            num_ln_in_parallel_attn=1, bias=True), drop=_ROPE),
    # falcon-rw style: ALiBi, all heads have k/v, sequential attention then MLP, bias. transformers' eager
    # Falcon added the ALiBi bias twice up to 5.x (once itself, once inside the mask it built with ALiBi folded
    # in); its sdpa path adds it once, as the original falcon-rw code does: compare with sdpa.
    "falcon_rw": Case("FalconConfig", dict(_FALCON, alibi=True, multi_query=False, parallel_attn=False, bias=True),
                      drop=_ROPE, hf_attention="sdpa"),
    # mpt-7b style: 4 heads, alibi_bias_max 8, no clipping, hub architecture string MPTForCausalLM.
    "mpt_7b": Case("MptConfig", dict(_MPT, d_model=64, n_heads=4, attn_config=dict(alibi_bias_max=8)),
                   dict(architectures=["MPTForCausalLM"])),
    # 6 heads (MPT's odd/even slope reordering), clip_qkv and an explicit softmax_scale; as transformers saves it.
    "mpt_clip": Case("MptConfig", dict(_MPT, d_model=48, n_heads=6, attn_config=dict(clip_qkv=0.3,
                                                                                     softmax_scale=0.3))),
}  # fmt: skip

# --- OLMo 2 and Granite (Llama decoders), StarCoder2 ----------------------------------------------------------
_STARCODER2 = dict(_NO_SPECIAL, vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, norm_epsilon=1e-5,
                   hidden_act="gelu_pytorch_tanh")
LLAMA_LIKE = {
    # OLMo-2 style: q_norm over 4 * 16, k_norm over 2 * 16 (grouped KV heads), post-norms only, untied head.
    "olmo2": Case("Olmo2Config", dict(_LLAMA, tie_word_embeddings=False),
                  dict(rope_theta=500000.0, rope_scaling=None), _ROPE),
    # Granite-3 style: all four multipliers away from 1 (attention_multiplier != head_dim ** -0.5 = 0.25), tied head.
    "granite": Case("GraniteConfig", dict(_LLAMA, tie_word_embeddings=True, embedding_multiplier=12.0,
                                          residual_multiplier=0.22, attention_multiplier=0.0625, logits_scaling=8.0),
                    dict(rope_theta=10000.0, rope_scaling=None), _ROPE),
    # Biases on every projection (attention_bias, mlp_bias), untied head, other multiplier values.
    "granite_bias": Case("GraniteConfig", dict(_LLAMA, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                                               embedding_multiplier=4.0, residual_multiplier=0.5,
                                               attention_multiplier=0.125, logits_scaling=2.5),
                         dict(rope_theta=10000.0, rope_scaling=None), _ROPE),
    # starcoder2-3b style: config.json without tie_word_embeddings (tied by default), biases, LayerNorm, GELU MLP,
    # sliding window 7 on every layer.
    "starcoder2": Case("Starcoder2Config", dict(_STARCODER2, sliding_window=7, use_bias=True),
                       dict(rope_theta=999999.0), (*_ROPE, "tie_word_embeddings")),
    # No biases, no window, untied head.
    "starcoder2_nobias": Case("Starcoder2Config", dict(_STARCODER2, sliding_window=None, use_bias=False,
                                                       tie_word_embeddings=False), dict(rope_theta=10000.0), _ROPE),
}  # fmt: skip

# --- InternLM, InternLM2: Llama checkpoints rewritten into their hub layouts (remote_layouts.py) ----------------
REMOTE_LAYOUTS = {
    # internlm-chat-7b style: q/k/v/o biases, no GQA, config.json without num_key_value_heads, rope_theta or "bias"
    # (the repo's InternLMConfig defaults it to true); its rope is the `rotary` dict (base 50000 here; dynamic NTK
    # scaling_factor 1.0 is plain rope within max_position_embeddings).
    "internlm": Case("LlamaConfig", dict(_LLAMA, num_key_value_heads=4, attention_bias=True, tie_word_embeddings=False),
                     dict(rope_theta=50000.0, rope_scaling=None), _ROPE, layout="internlm",
                     layout_keys=dict(num_key_value_heads=None, bias=None, rope_theta=None, rope_scaling=None,
                                      rotary=dict(base=50000, type="dynamic"))),
    # internlm2-chat-7b style: GQA (2 query heads per kv head) so that wqkv's grouped rows are re-laid, "bias": false,
    # rope_theta 1e6; linear scaling here (it changes every position's rotation) in the hub's {"type": ...} spelling.
    "internlm2": Case("LlamaConfig", dict(_LLAMA, tie_word_embeddings=False),
                      dict(rope_theta=1000000.0, rope_scaling=dict(rope_type="linear", factor=2.0)), _ROPE,
                      layout="internlm2", layout_keys=dict(rope_scaling=dict(type="linear", factor=2.0))),
    # 8 query heads over 2 kv heads (4 per group), biases on wqkv and wo, dynamic NTK as the 7B / 20B chat configs.
    "internlm2_bias": Case("LlamaConfig", dict(_LLAMA, num_attention_heads=8, attention_bias=True,
                                               tie_word_embeddings=False),
                           dict(rope_theta=1000000.0, rope_scaling=dict(rope_type="dynamic", factor=2.0)), _ROPE,
                           layout="internlm2", layout_keys=dict(rope_scaling=dict(type="dynamic", factor=2.0))),
}  # fmt: skip

# --- GLM, and ChatGLM2/3 / GLM-4 (a GLM checkpoint rewritten into the remote-code layout) ----------------------
GLM = {
    # glm-4-9b-chat-hf style: q/k/v bias, GQA, head_dim 32 (!= 64 / 4), config.json with rope_theta and
    # partial_rotary_factor at top level; only the first 16 dims of each head rotate, in (even, odd) pairs.
    "glm": Case("GlmConfig", dict(_LLAMA, head_dim=32, attention_bias=True, tie_word_embeddings=False),
                dict(rope_theta=10000.0, partial_rotary_factor=0.5), _ROPE),
    # No bias, 8 heads over 2 kv heads, config.json without partial_rotary_factor (GlmConfig's 0.5 applies).
    "glm_nobias": Case("GlmConfig", dict(_LLAMA, num_attention_heads=8, head_dim=16, attention_bias=False,
                                         tie_word_embeddings=False), dict(rope_theta=500000.0), _ROPE),
    # GLM-4-9B-0414 style (Glm4): GLM plus post_self_attn_layernorm / post_mlp_layernorm; tied head here.
    "glm4": Case("Glm4Config", dict(_LLAMA, head_dim=32, attention_bias=True, tie_word_embeddings=True),
                 dict(rope_theta=10000.0, partial_rotary_factor=0.5), _ROPE),
    # glm-4-9b style ChatGLMModel: query_key_value over 2 kv groups with add_qkv_bias, rope_ratio 50 (base 500000),
    # kv_channels 16, output_layer, the saved rotary_pos_emb.inv_freq buffer.
    "chatglm": Case("GlmConfig", dict(_LLAMA, head_dim=16, attention_bias=True, tie_word_embeddings=False),
                    dict(rope_theta=500000.0), _ROPE, layout="chatglm"),
    # chatglm2-6b style: no q/k/v bias, multi_query_group_num 1, no rope_ratio key (base 10000); the
    # ChatGLMForConditionalGeneration spelling (the class its auto_map builds).
    "chatglm_mqa": Case("GlmConfig", dict(_LLAMA, num_key_value_heads=1, head_dim=16, attention_bias=False,
                                          tie_word_embeddings=False), dict(rope_theta=10000.0), _ROPE,
                        layout="chatglm",
                        layout_keys=dict(rope_ratio=None, architectures=["ChatGLMForConditionalGeneration"])),
}  # fmt: skip

CASES: dict[str, Case] = {**LLAMA, **GEMMA, **GPT_PHI, **ALIBI_FAMILIES, **LLAMA_LIKE, **REMOTE_LAYOUTS, **GLM}
STRICT = sorted(name for name, case in CASES.items() if case.strict)
