"""gemma3_text (Gemma3ForCausalLM) parameter counts from config against transformers' meta-device build."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llmctl.cli.app import app
from llmctl.core.estimate import count_parameters, parameter_count
from llmctl.core.spec import spec_from_config

# google/gemma-3-1b-it's config.json (structural keys), as the hub stores it: no tie_word_embeddings key.
GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 1152,
    "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1,
    "head_dim": 256, "vocab_size": 262144, "query_pre_attn_scalar": 256, "sliding_window": 512,
    "sliding_window_pattern": 6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "attention_bias": False,
    "hidden_activation": "gelu_pytorch_tanh", "torch_dtype": "bfloat16",
}  # fmt: skip
GEMMA3_1B_PUBLISHED = 999_885_952  # the model card's safetensors total

TINY = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=24, max_position_embeddings=64)  # head_dim != hidden / heads (16)
CASES = {
    "tied": TINY,
    "untied-bias": dict(TINY, tie_word_embeddings=False, attention_bias=True),
    "mqa-wide-head": dict(TINY, num_key_value_heads=1, head_dim=40, num_hidden_layers=2),
}


def _meta_count(config) -> int:
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.Gemma3ForCausalLM(config)
    return sum(p.numel() for p in model.parameters())  # tied head: one tensor, counted once


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_formula_matches_transformers(kwargs):
    import transformers

    config = transformers.Gemma3TextConfig(**kwargs)
    as_saved = {**config.to_dict(), "architectures": ["Gemma3ForCausalLM"]}  # what save_pretrained writes
    assert count_parameters(spec_from_config(as_saved)) == _meta_count(config)


def _hub_config_as_transformers_reads_it(data: dict):
    import transformers

    kwargs = {k: v for k, v in data.items() if k not in ("architectures", "model_type", "torch_dtype")}
    return transformers.Gemma3TextConfig(**kwargs)


def test_gemma3_1b_matches_transformers_and_the_model_card():
    """A real-size config without tie_word_embeddings: transformers ties by default, and so must the formula."""
    spec = spec_from_config(GEMMA3_1B)
    expected = _meta_count(_hub_config_as_transformers_reads_it(GEMMA3_1B))
    assert count_parameters(spec) == expected == GEMMA3_1B_PUBLISHED


def test_untied_real_size_counts_the_head():
    data = dict(GEMMA3_1B, tie_word_embeddings=False)
    expected = _meta_count(_hub_config_as_transformers_reads_it(data))
    assert count_parameters(spec_from_config(data)) == expected == GEMMA3_1B_PUBLISHED + 262144 * 1152


def test_inspect_arch_shows_the_count(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GEMMA3_1B))
    result = CliRunner().invoke(app, ["inspect-arch", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["num_parameters"], data["param_count_source"]) == (GEMMA3_1B_PUBLISHED, "config")
    assert data["weight_bytes"]["bf16"] == 2 * GEMMA3_1B_PUBLISHED


def test_multimodal_gemma3_counts_the_language_model_only():
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": {k: v for k, v in GEMMA3_1B.items() if k != "architectures"},
              "vision_config": {"model_type": "siglip_vision_model"}}
    count = parameter_count(spec_from_config(config))
    assert count.total == GEMMA3_1B_PUBLISHED and "language model only" in count.note


def test_gemma3_text_defaults_in_inspect_arch(tmp_path):
    """A gemma3_text config.json that omits the keys Gemma3TextConfig defaults (tied embeddings, head_dim 256)."""
    import json
    import subprocess
    import sys

    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 1152,
        "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1,
        "vocab_size": 262144,
    }))  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "llmctl", "inspect-arch", str(tmp_path), "--json"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    data = json.loads(out.stdout)
    text = json.dumps(data)
    assert '"tie_word_embeddings": true' in text and '"head_dim": 256' in text and "RMSNorm" in text
