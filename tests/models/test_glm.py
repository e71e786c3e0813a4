"""GLM and ChatGLM beyond the strict checks of test_consistency.py: interleaved half-head rope, ChatGLM's names and
packing, `check` without remote code, parameter counts from config, and the ChatGLM variants refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from llmctl.core.errors import UnsupportedModelError

GLM_CASES = ["glm", "glm_nobias", "glm4", "chatglm", "chatglm_mqa"]


def test_rope_is_interleaved_over_half_of_each_head(bench):
    _, ours, _ = bench.pair("glm")
    attn = ours.model.layers[0].self_attn
    assert (attn.rotary_emb.rotary_dim, attn.rotary_emb.head_size, attn.rotary_emb.is_neox_style) == (16, 32, False)
    assert attn.o_proj.bias is None and attn.qkv_proj.bias is not None
    assert bench.kv_cache_shape("glm") == (2, 2, 32)
    assert not hasattr(ours.model.layers[0], "post_mlp_layernorm")


def test_glm4_norms_each_sublayer_output(bench):
    _, ours, _ = bench.pair("glm4")
    layer = ours.model.layers[1]
    assert layer.post_self_attn_layernorm.weight.shape == layer.post_mlp_layernorm.weight.shape == (64,)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert layer.self_attn.rotary_emb.is_neox_style is False and layer.self_attn.rotary_emb.rotary_dim == 16


def test_chatglm_tensors_are_loaded_from_the_remote_names(bench):
    """query_key_value (q | k | v rows) and dense_h_to_4h (gate | up) load whole; rope base = 10000 * rope_ratio."""
    path = bench.checkpoint("chatglm")
    state = load_file(str(path / "model.safetensors"))
    assert "transformer.encoder.layers.1.self_attention.query_key_value.bias" in state
    assert "transformer.rotary_pos_emb.inv_freq" in state and not any(".self_attn." in n for n in state)
    reference = load_file(str(bench.reference("chatglm") / "model.safetensors"))
    _, ours, _ = bench.pair("chatglm")
    layer = ours.model.layers[1]
    expected = torch.cat([reference[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"])
    torch.testing.assert_close(layer.self_attn.qkv_proj.weight, expected, rtol=0, atol=0)
    torch.testing.assert_close(layer.mlp.gate_up_proj.weight, reference["model.layers.1.mlp.gate_up_proj.weight"],
                               rtol=0, atol=0)
    torch.testing.assert_close(ours.lm_head.weight, reference["lm_head.weight"], rtol=0, atol=0)
    assert ours.config.rope_parameters["rope_theta"] == 500000.0  # rope_ratio 50
    assert bench.kv_cache_shape("chatglm") == (2, 2, 16) and bench.kv_cache_shape("chatglm_mqa") == (2, 1, 16)


@pytest.mark.parametrize("name", GLM_CASES)
def test_check_says_native_and_counts_from_config(bench, name):
    """`check` runs no repo code and asks for no flag; the config formula counts exactly the checkpoint's tensors."""
    from typer.testing import CliRunner

    from llmctl.cli.app import app
    from llmctl.core.estimate import count_parameters
    from llmctl.core.spec import spec_from_config

    path = bench.checkpoint(name)
    config = json.loads((path / "config.json").read_text())
    result = CliRunner().invoke(app, ["check", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["implementation"] == "native" and verdict["supported"] is True
    assert verdict["needs_trust_remote_code"] is False and verdict["verification"] == "strict"
    spec = spec_from_config(config)
    assert spec.partial_rotary_factor == 0.5
    state = load_file(str(path / "model.safetensors"))
    in_checkpoint = sum(t.numel() for n, t in state.items() if not n.endswith("inv_freq"))
    assert count_parameters(spec) == in_checkpoint
    _, ours, _ = bench.pair(name)
    assert sum(p.numel() for p in ours.parameters()) == in_checkpoint


# glm-4-9b-chat-hf's config.json (transformers' GlmForCausalLM) and glm-4-9b's (remote ChatGLMModel).
GLM4_HF = {
    "architectures": ["GlmForCausalLM"], "model_type": "glm", "attention_bias": True, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 13696, "max_position_embeddings": 131072,
    "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 2, "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1.5625e-07, "rope_theta": 10000.0, "tie_word_embeddings": False, "vocab_size": 151552,
}
GLM4_REMOTE = {
    "architectures": ["ChatGLMModel"], "model_type": "chatglm", "add_bias_linear": False, "add_qkv_bias": True,
    "apply_residual_connection_post_layernorm": False, "ffn_hidden_size": 13696, "hidden_size": 4096,
    "kv_channels": 128, "layernorm_epsilon": 1.5625e-07, "multi_query_attention": True, "multi_query_group_num": 2,
    "num_attention_heads": 32, "num_layers": 40, "padded_vocab_size": 151552, "post_layer_norm": True,
    "rmsnorm": True, "rope_ratio": 500, "seq_length": 131072, "original_rope": True,
}  # fmt: skip


GLM4_0414 = {**GLM4_HF, "architectures": ["Glm4ForCausalLM"], "model_type": "glm4", "num_hidden_layers": 40,
             "intermediate_size": 13696, "rms_norm_eps": 1e-05, "max_position_embeddings": 32768}


def test_glm4_0414_hub_config_counts_as_transformers_builds_it():
    import transformers

    from llmctl.core.estimate import count_parameters
    from llmctl.core.spec import spec_from_config
    from llmctl.model_defs.glm import Glm4ForCausalLM

    config = transformers.Glm4Config(**{k: v for k, v in GLM4_0414.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        reference = sum(p.numel() for p in transformers.Glm4ForCausalLM(config).parameters())
        ours = sum(p.numel() for p in Glm4ForCausalLM(config).parameters())
    assert reference == ours == count_parameters(spec_from_config(GLM4_0414))


def test_glm4_hub_configs_count_as_the_models_built():
    """Both spellings of GLM-4-9B: the formula, transformers' meta build and llmctl's meta build agree."""
    import transformers
    from transformers import PretrainedConfig

    from llmctl.core.estimate import count_parameters
    from llmctl.core.spec import spec_from_config
    from llmctl.model_defs.glm import ChatGLMModel, GlmForCausalLM

    hf_config = transformers.GlmConfig(**{k: v for k, v in GLM4_HF.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        reference = sum(p.numel() for p in transformers.GlmForCausalLM(hf_config).parameters())
        glm = sum(p.numel() for p in GlmForCausalLM(hf_config).parameters())
        chatglm = sum(p.numel() for p in ChatGLMModel(PretrainedConfig(**GLM4_REMOTE)).parameters())
    assert reference == glm == chatglm == count_parameters(spec_from_config(GLM4_HF))
    assert count_parameters(spec_from_config(GLM4_REMOTE)) == reference


@pytest.mark.parametrize(("key", "value"), [("rmsnorm", False), ("add_bias_linear", True), ("post_layer_norm", False),
                                            ("apply_residual_connection_post_layernorm", True)])
def test_chatglm_variants_no_checkpoint_uses_are_refused(key, value):
    from llmctl.model_defs.glm import llama_config_of_chatglm

    with pytest.raises(UnsupportedModelError, match=key):
        llama_config_of_chatglm(SimpleNamespace(**{key: value}))


def test_chatglm_config_defaults_are_the_remote_configs():
    """A config.json that leaves keys out gets ChatGLMConfig's defaults (chatglm2-6b's sizes, no GQA, base 10000)."""
    from llmctl.model_defs.glm import llama_config_of_chatglm

    config = llama_config_of_chatglm(SimpleNamespace())
    assert (config.vocab_size, config.num_hidden_layers, config.head_dim, config.intermediate_size) == (
        65024, 28, 128, 13696)
    assert config.num_key_value_heads == 32 and config.rope_parameters["rope_theta"] == 10000.0
    assert config.attention_bias is False and config.max_position_embeddings == 2048


def test_chatglm_tokenizer_of_repo_code_needs_the_flag_and_token_ids_run_without_it(bench, tmp_path):
    """chatglm3-6b's tokenizer is ChatGLMTokenizer from the repo (its [gMASK] / sop prefix is code, not a file)."""
    import shutil

    from typer.testing import CliRunner

    from llmctl import LLM, SamplingParams
    from llmctl.cli.app import app

    path = tmp_path / "chatglm3"
    shutil.copytree(bench.checkpoint("chatglm"), path)
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "ChatGLMTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
    }))  # fmt: skip
    kw = dict(dtype="float32", device="cpu", max_model_len=32, num_kv_blocks=16, block_size=4)
    with pytest.raises(UnsupportedModelError, match="defined by code in the model's repo") as err:
        LLM(str(path), **kw)
    assert "--trust-remote-code" in err.value.hint
    result = CliRunner().invoke(app, ["generate", "-m", str(path), "-p", "hello", "--device", "cpu"])
    assert result.exit_code == UnsupportedModelError.exit_code
    assert "--trust-remote-code" in result.stderr and "Traceback" not in result.stderr
    llm = LLM(str(path), skip_tokenizer_init=True, **kw)
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    assert len(llm.generate([{"prompt_token_ids": [5, 6, 7]}], params)[0].outputs[0].token_ids) == 3


def test_chatglm_seq_length_is_the_position_limit(bench):
    """ChatGLM's config has no max_position_embeddings: seq_length bounds max_model_len, as `check` reads it."""
    from llmctl import LLM
    from llmctl.core.errors import UsageError

    kw = dict(dtype="float32", device="cpu", num_kv_blocks=64, block_size=4, skip_tokenizer_init=True)
    with pytest.raises(UsageError, match="256"):
        LLM(str(bench.checkpoint("chatglm")), max_model_len=512, **kw)
    assert LLM(str(bench.checkpoint("chatglm")), **kw).max_model_len == 256  # the default, not 2048
