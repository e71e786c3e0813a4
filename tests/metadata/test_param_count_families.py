"""Starcoder2, OLMo 2 and Granite parameter counts from config against transformers' meta-device build."""

from __future__ import annotations

import pytest

from llmctl.core.estimate import count_parameters
from llmctl.core.spec import spec_from_config

TINY = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
# (architecture, config class, kwargs as transformers takes them)
CASES = {
    "starcoder2-tied-bias": ("Starcoder2ForCausalLM", "Starcoder2Config", dict(TINY, use_bias=True)),
    "starcoder2-untied-nobias": ("Starcoder2ForCausalLM", "Starcoder2Config",
                                 dict(TINY, use_bias=False, tie_word_embeddings=False)),
    "olmo2-gqa": ("Olmo2ForCausalLM", "Olmo2Config", TINY),  # k_norm (2 * 16) narrower than q_norm (4 * 16)
    "olmo2-bias-tied": ("Olmo2ForCausalLM", "Olmo2Config",
                        dict(TINY, num_key_value_heads=4, attention_bias=True, tie_word_embeddings=True)),
    "granite-untied": ("GraniteForCausalLM", "GraniteConfig", dict(TINY, embedding_multiplier=12.0)),
    "granite-bias-tied": ("GraniteForCausalLM", "GraniteConfig",
                          dict(TINY, attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
}  # fmt: skip
# Real-size shapes as the hub stores them (starcoder2-3b-like: no tie_word_embeddings key, use_bias true).
HUB = {
    "starcoder2-3b": {
        "architectures": ["Starcoder2ForCausalLM"], "model_type": "starcoder2", "vocab_size": 49152,
        "hidden_size": 3072, "intermediate_size": 12288, "num_hidden_layers": 30, "num_attention_heads": 24,
        "num_key_value_heads": 2, "max_position_embeddings": 16384, "norm_epsilon": 1e-5, "use_bias": True,
        "hidden_act": "gelu_pytorch_tanh", "rope_theta": 999999.4420358813, "sliding_window": 4096,
    },
    "olmo2-7b": {
        "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "vocab_size": 100352, "hidden_size": 4096,
        "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "attention_bias": False,
        "tie_word_embeddings": False, "rope_theta": 500000,
    },
    "granite-3-2b": {
        "architectures": ["GraniteForCausalLM"], "model_type": "granite", "vocab_size": 49155, "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 4096, "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
        "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.015625,
        "logits_scaling": 8.0,
    },
}  # fmt: skip


def _meta_count(architecture: str, config) -> int:
    import torch
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, architecture)(config)
    return sum(p.numel() for p in model.parameters())  # a tied head is one tensor, counted once


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_formula_matches_transformers(case):
    import transformers

    architecture, config_class, kwargs = case
    config = getattr(transformers, config_class)(**kwargs)
    as_saved = {**config.to_dict(), "architectures": [architecture]}  # what save_pretrained writes
    assert count_parameters(spec_from_config(as_saved)) == _meta_count(architecture, config)


@pytest.mark.parametrize("data", HUB.values(), ids=HUB.keys())
def test_hub_style_config_matches_transformers(data):
    """Keys the hub file leaves out take transformers' defaults (Starcoder2Config ties the head)."""
    import transformers

    config = transformers.AutoConfig.for_model(
        data["model_type"], **{k: v for k, v in data.items() if k not in ("architectures", "model_type")}
    )
    assert count_parameters(spec_from_config(data)) == _meta_count(data["architectures"][0], config)
