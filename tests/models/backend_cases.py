"""Tiny configs for every text-generation architecture of vLLM's supported list: the cases `check` is held to.

tests/models/test_check_truth.py builds each with the installed transformers (config class from
transformers' auto mappings, the generic TINY sizes, then the architecture's own overrides), saves a random
float32 checkpoint, and compares `check`'s verdict with a short generation through llmctl against
transformers' own greedy output. Overrides exist where a family's defaults cannot be made tiny by the
generic keys, or to switch on the feature that decides its verdict (a recurrent layer in a hybrid stack,
a sliding window shorter than the prompt, a value head size unlike the query's).
"""

from __future__ import annotations

# vLLM's _TEXT_GENERATION_MODELS (vllm/model_executor/models/registry.py, December 2026), plus the
# decoder architectures of llmctl's registry that this list spells otherwise.
VLLM_TEXT_GENERATION = (
    "AfmoeForCausalLM", "ApertusForCausalLM", "AquilaModel", "AquilaForCausalLM", "ArceeForCausalLM",
    "ArcticForCausalLM", "BaiChuanForCausalLM", "BaichuanForCausalLM", "BailingMoeForCausalLM",
    "BailingMoeV2ForCausalLM", "BambaForCausalLM", "BloomForCausalLM", "ChatGLMModel",
    "ChatGLMForConditionalGeneration", "CohereForCausalLM", "Cohere2ForCausalLM", "CwmForCausalLM",
    "DbrxForCausalLM", "DeciLMForCausalLM", "DeepseekForCausalLM", "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM", "DeepseekV32ForCausalLM", "Dots1ForCausalLM", "Ernie4_5ForCausalLM",
    "Ernie4_5_MoeForCausalLM", "ExaoneForCausalLM", "Exaone4ForCausalLM", "Fairseq2LlamaForCausalLM",
    "FalconForCausalLM", "FalconMambaForCausalLM", "FalconH1ForCausalLM", "FlexOlmoForCausalLM",
    "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3nForCausalLM", "Qwen3NextForCausalLM",
    "GlmForCausalLM", "Glm4ForCausalLM", "Glm4MoeForCausalLM", "GptOssForCausalLM", "GPT2LMHeadModel",
    "GPTBigCodeForCausalLM", "GPTJForCausalLM", "GPTNeoXForCausalLM", "GraniteForCausalLM",
    "GraniteMoeForCausalLM", "GraniteMoeHybridForCausalLM", "GraniteMoeSharedForCausalLM", "GritLM",
    "Grok1ModelForCausalLM", "HunYuanMoEV1ForCausalLM", "HunYuanDenseV1ForCausalLM", "HCXVisionForCausalLM",
    "InternLMForCausalLM", "InternLM2ForCausalLM", "InternLM2VEForCausalLM", "InternLM3ForCausalLM",
    "JAISLMHeadModel", "Jais2ForCausalLM", "JambaForCausalLM", "KimiLinearForCausalLM", "Lfm2ForCausalLM",
    "Lfm2MoeForCausalLM", "LlamaForCausalLM", "Llama4ForCausalLM", "LLaMAForCausalLM",
    "LongcatFlashForCausalLM", "MambaForCausalLM", "Mamba2ForCausalLM", "MiniCPMForCausalLM",
    "MiniCPM3ForCausalLM", "MiniMaxForCausalLM", "MiniMaxText01ForCausalLM", "MiniMaxM1ForCausalLM",
    "MiniMaxM2ForCausalLM", "MistralForCausalLM", "MistralLarge3ForCausalLM", "MixtralForCausalLM",
    "MptForCausalLM", "MPTForCausalLM", "MiMoForCausalLM", "MiMoV2FlashForCausalLM", "NemotronForCausalLM",
    "NemotronHForCausalLM", "OlmoForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM",
    "OPTForCausalLM", "OrionForCausalLM", "OuroForCausalLM", "PanguEmbeddedForCausalLM",
    "PanguProMoEV2ForCausalLM", "PanguUltraMoEForCausalLM", "PersimmonForCausalLM", "PhiForCausalLM",
    "Phi3ForCausalLM", "PhiMoEForCausalLM", "Plamo2ForCausalLM", "Plamo3ForCausalLM", "QWenLMHeadModel",
    "Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "RWForCausalLM",
    "SeedOssForCausalLM", "Step3TextForCausalLM", "StableLMEpochForCausalLM", "StableLmForCausalLM",
    "Starcoder2ForCausalLM", "SolarForCausalLM", "TeleChatForCausalLM", "TeleChat2ForCausalLM",
    "TeleFLMForCausalLM", "XverseForCausalLM", "Zamba2ForCausalLM", "SmolLM3ForCausalLM",
)  # fmt: skip

# Generic tiny sizes, passed where the config class takes the key (directly or through its attribute_map).
# sliding_window 4 < the prompt, so every family with windows is checked with the window in force.
TINY = dict(
    vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=4, moe_intermediate_size=32,
    num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
    shared_expert_intermediate_size=32, n_group=1, topk_group=1, first_k_dense_replace=1,
    bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False,
)  # fmt: skip

# Multi-head latent attention: every head has its own k/v (no GQA), value heads 16 wide, query heads 16 + 8.
_MLA = dict(q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, head_dim=None,
            num_key_value_heads=4)
_MAMBA2 = dict(mamba_n_heads=4, mamba_d_head=32, mamba_n_groups=1, mamba_d_state=16, mamba_chunk_size=16)

# Per-architecture keys on top of TINY (None removes a TINY key); "model_type" picks another config class.
OVERRIDES: dict[str, dict] = {
    "BambaForCausalLM": dict(attn_layer_indices=[1], **_MAMBA2),
    "CwmForCausalLM": dict(bos_token_id=1, eos_token_id=2),  # its config wants integer token ids
    "DbrxForCausalLM": dict(
        attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        ffn_config={"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2},
    ),
    "DeepseekV2ForCausalLM": _MLA,
    "DeepseekV3ForCausalLM": _MLA,
    "DeepseekV32ForCausalLM": dict(_MLA, index_n_heads=2, index_head_dim=16, index_topk=4),
    "FalconH1ForCausalLM": dict(mamba_d_ssm=128, **_MAMBA2),
    "Gemma3nForCausalLM": dict(
        model_type="gemma3n_text", num_hidden_layers=4, num_kv_shared_layers=2, hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=128, laurel_rank=8, altup_num_inputs=2, activation_sparsity_pattern=[0.0] * 4,
        layer_types=["sliding_attention", "full_attention"] * 2,
    ),
    "GPTJForCausalLM": dict(rotary_dim=8),
    "GraniteMoeHybridForCausalLM": dict(layer_types=["mamba", "attention"], shared_intermediate_size=32, **_MAMBA2),
    "JambaForCausalLM": dict(
        attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
        use_mamba_kernels=False, mamba_d_state=8,
    ),
    "KimiLinearForCausalLM": dict(
        _MLA, layer_types=["linear_attention", "full_attention"], linear_head_dim=16, linear_num_heads=4,
        moe_intermediate_size=32,
    ),
    "Lfm2ForCausalLM": dict(layer_types=["conv", "full_attention"]),
    "Lfm2MoeForCausalLM": dict(layer_types=["conv", "full_attention"], num_dense_layers=1),
    "Llama4ForCausalLM": dict(model_type="llama4_text", intermediate_size_mlp=64, attention_chunk_size=4),
    "LongcatFlashForCausalLM": dict(
        _MLA, num_layers=1, ffn_hidden_size=64, expert_ffn_hidden_size=32, zero_expert_num=2, moe_topk=2,
        head_dim=8,
    ),
    "Mamba2ForCausalLM": dict(num_heads=8, head_dim=16, n_groups=1, state_size=16, chunk_size=16),
    "MiniCPM3ForCausalLM": dict(_MLA, v_head_dim=24),  # MLA whose value heads match the query's: it runs
    "MiniMaxForCausalLM": dict(layer_types=["linear_attention", "full_attention"], block_size=4),
    "MiMoV2FlashForCausalLM": dict(v_head_dim=8),
    "NemotronHForCausalLM": dict(
        layers_block_type=["mamba", "attention"], mamba_num_heads=4, mamba_head_dim=32, n_groups=1,
        ssm_state_size=16, chunk_size=16,
    ),
    "Qwen3NextForCausalLM": dict(
        layer_types=["linear_attention", "full_attention"], linear_key_head_dim=16, linear_value_head_dim=16,
        linear_num_key_heads=2, linear_num_value_heads=4,
    ),
    "Zamba2ForCausalLM": dict(
        layers_block_type=["mamba", "hybrid"], n_mamba_heads=4, mamba_d_state=16, chunk_size=16, adapter_rank=8,
    ),
}


class NotBuildable(Exception):
    """The installed transformers has no causal-LM class of this name, or cannot build it tiny."""


def model_type_for(architecture: str) -> str:
    """The model_type whose auto mapping builds `architecture` as a causal LM (preferring the file defining it)."""
    import importlib.util
    from pathlib import Path

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    types = [t for t, name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items() if name == architecture]
    if not types:
        raise NotBuildable(f"transformers has no causal LM {architecture}")
    models = Path(importlib.util.find_spec("transformers").origin).parent / "models"
    for model_type in types:
        folder = model_type.replace("-", "_")
        source = models / folder / f"modeling_{folder}.py"
        if source.is_file() and f"class {architecture}(" in source.read_text(encoding="utf-8"):
            return model_type
    return types[0]


def tiny_config(architecture: str):
    """A transformers config of `architecture` at TINY sizes plus its OVERRIDES (architectures set)."""
    import inspect

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    overrides = dict(OVERRIDES.get(architecture, {}))
    model_type = overrides.pop("model_type", None) or model_type_for(architecture)
    cls = CONFIG_MAPPING[model_type]
    params = inspect.signature(cls.__init__).parameters
    alias = getattr(cls, "attribute_map", {}) or {}
    kwargs = {}
    for key, value in {**TINY, **overrides}.items():
        name = key if key in params else alias.get(key)
        if name in params:
            kwargs[name] = value
        if value is None and key in overrides:  # an override that removes a generic key
            kwargs.pop(name or key, None)
    try:
        config = cls(**kwargs)
    except Exception as exc:  # transformers' own validation: this generic recipe does not fit the family
        raise NotBuildable(f"{cls.__name__}: {exc}") from exc
    config.architectures = [architecture]
    return config
