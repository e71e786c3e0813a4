"""What the transformers backend refuses, and why: check's static reading (config.json + transformers' source),
the load-time reading of the built module tree, and `llmctl generate` refusing with the same reason."""

from __future__ import annotations

import json

import pytest

from llmctl.core import backend_features as bf

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=64)  # fmt: skip


def _folder(tmp_path, name, architecture, model_type, **config):
    folder = tmp_path / name
    folder.mkdir()
    data = {**TINY, "architectures": [architecture], "model_type": model_type, "torch_dtype": "float32", **config}
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def _check(folder) -> tuple[int, dict]:
    from typer.testing import CliRunner

    from llmctl.cli.app import app

    result = CliRunner().invoke(app, ["check", str(folder), "--json"])
    return result.exit_code, json.loads(result.stdout)


def _backend_reason(data: dict) -> str:
    reasons = [r for r in data["reasons"] if r.startswith("the transformers backend cannot run it: ")]
    assert len(reasons) == 1, data["reasons"]
    return reasons[0]


# (architecture, model_type, config keys, words the reason must contain): one case per rule.
REFUSED = [
    ("Lfm2ForCausalLM", "lfm2", dict(layer_types=["conv", "full_attention"]), "conv layers keep state"),
    ("MiniMaxForCausalLM", "minimax", dict(layer_types=["linear_attention", "full_attention"], num_local_experts=4,
                                           num_experts_per_tok=2), "linear_attention layers keep state"),
    ("GraniteMoeHybridForCausalLM", "granitemoehybrid", dict(layer_types=["mamba", "attention"], num_local_experts=4,
                                                             num_experts_per_tok=2), "mamba layers keep state"),
    ("GptOssForCausalLM", "gpt_oss", dict(num_local_experts=4, num_experts_per_tok=2), "attention sinks"),
    ("DeepseekV2ForCausalLM", "deepseek_v2", dict(q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
                                                   qk_rope_head_dim=8, v_head_dim=16, head_dim=8, n_routed_experts=4,
                                                   num_experts_per_tok=2),
     "value head size (16) differs from the query's (24)"),
    ("Llama4ForCausalLM", "llama4_text", dict(layer_types=["chunked_attention", "full_attention"]),
     "chunked_attention layers need an attention pattern"),
    ("DeepseekV32ForCausalLM", "deepseek_v32", dict(q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=8,
                                                     qk_rope_head_dim=8, v_head_dim=16, head_dim=8,
                                                     layer_types=["full_attention", "full_attention"]),
     "read the attention mask itself"),
]  # fmt: skip


@pytest.mark.parametrize(("architecture", "model_type", "config", "words"), REFUSED, ids=[c[0] for c in REFUSED])
def test_check_refuses_with_the_reason(tmp_path, architecture, model_type, config, words):
    code, data = _check(_folder(tmp_path, "m", architecture, model_type, **config))
    assert code == 1 and data["supported"] is False and data["implementation"] == "none"
    assert words in _backend_reason(data)


def test_hybrid_family_with_only_attention_layers_is_supported(tmp_path):
    # Lfm2's file defines a conv layer, but this config builds attention layers only: nothing keeps state.
    code, data = _check(_folder(tmp_path, "m", "Lfm2ForCausalLM", "lfm2", layer_types=["full_attention"] * 2))
    assert code == 0 and data["implementation"] == "transformers"
    # Told nothing about which layers are attention, a family with stateful layers is refused.
    code, data = _check(_folder(tmp_path, "n", "Lfm2ForCausalLM", "lfm2"))
    assert code == 1 and "keep state between steps" in _backend_reason(data)


def test_unverified_backend_architecture_is_not_strict(tmp_path, monkeypatch):
    from llmctl.core import registry

    folder = _folder(tmp_path, "m", "Olmo3ForCausalLM", "olmo3")
    assert _check(folder)[1]["verification"] == "strict"
    monkeypatch.delitem(registry.TRANSFORMERS_VERIFIED, "Olmo3ForCausalLM")
    code, data = _check(folder)
    assert code == 0 and data["implementation"] == "transformers" and data["verification"] == "none"


def test_layer_kinds_from_each_family_key():
    assert bf.layer_types({"layer_types": ["conv", "full_attention"]}) == ["conv", "full_attention"]
    assert bf.layer_types({"text_config": {"layer_types": ["sliding_attention"]}}) == ["sliding_attention"]
    assert bf.layer_types({"layers_block_type": ["mamba", "attention"]}) == ["mamba", "attention"]
    assert bf.layer_types({"hybrid_override_pattern": "M-*E"}) == ["mamba", "mlp", "attention", "moe"]
    assert bf.layer_types({"num_hidden_layers": 3, "attn_layer_indices": [1]}) == ["mamba", "attention", "mamba"]
    jamba = {"num_hidden_layers": 4, "attn_layer_period": 2, "attn_layer_offset": 1}
    assert bf.layer_types(jamba) == ["mamba", "attention", "mamba", "attention"]
    assert bf.layer_types({"num_hidden_layers": 2}) is None
    assert bf.layer_types({"layer_types": "full_attention"}) is None  # malformed: said nothing
    assert bf.layer_types_blocker(["full_attention", "sliding_attention", "moe", "dummy"]) is None
    assert "hybrid layers keep state" in bf.layer_types_blocker(["attention", "hybrid"])
    assert "window_attention layers need" in bf.layer_types_blocker(["window_attention"])


def test_class_rules_on_source_text():
    source = '''
class FooShortConv(nn.Module):
    def __init__(self):
        self.conv = nn.Conv1d(4, 4, 3, groups=4, padding=2)

class FooMixer(nn.Module):
    def forward(self, x, cache_params=None):
        return x

class FooAttention(nn.Module):
    def __init__(self):
        self.sinks = nn.Parameter(torch.empty(4))
    def forward(self, x, attention_mask=None):
        return attention_interface(self, x, x, x, attention_mask, s_aux=self.sinks)

class FooIndexer(nn.Module):
    def forward(self, x, attention_mask):
        return x + attention_mask[:, 0]

class FooPassesMask(nn.Module):
    def forward(self, x, attention_mask):
        return self.attn(x, attention_mask=attention_mask)

class FooPreTrainedModel(PreTrainedModel):
    pass

class FooModel(FooPreTrainedModel):
    def forward(self, x, attention_mask=None, cache_params=None):
        return attention_mask.shape
'''
    found = bf.class_features(source)
    assert found == {"state": {"FooShortConv", "FooMixer"}, "sinks": {"FooAttention"}, "mask": {"FooIndexer"}}
    assert bf.class_features(source, "FooPassesMask") == {"state": set(), "mask": set(), "sinks": set()}
    assert "FooMixer, FooShortConv layers keep state" in bf.features_blocker(found, None)
    assert "FooMixer" in bf.features_blocker(found, ["conv", "full_attention"])
    only_mask = {"state": set(), "sinks": set(), "mask": {"FooIndexer"}}
    assert bf.features_blocker(only_mask, None) == (
        "FooIndexer reads the attention mask itself, which llmctl does not build"
    )
    attention_only = {"state": {"FooShortConv"}, "sinks": set(), "mask": set()}
    assert bf.features_blocker(attention_only, ["full_attention", "sliding_attention"]) is None


def test_value_head_and_base_model_rules():
    assert bf.value_head_blocker({"v_head_dim": 128, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64})
    assert bf.value_head_blocker({"v_head_dim": 192, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64}) is None
    assert bf.value_head_blocker({"v_head_dim": 64, "head_dim": 128}) is not None
    assert bf.value_head_blocker({"head_dim": 128}) is None
    source = '''
class BarPreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"

class BarForCausalLM(BarPreTrainedModel):
    base_model_prefix = "language_model"
    def __init__(self, config):
        self.model = BarTextModel(config)
        self.lm_head = nn.Linear(1, 1)

class BazForCausalLM(BarPreTrainedModel):
    def __init__(self, config):
        self.model = BarTextModel(config)
'''
    assert bf.base_model_blocker(source, "BarForCausalLM") == bf.NO_BASE_REASON.format(architecture="BarForCausalLM")
    assert bf.base_model_blocker(source, "BazForCausalLM") is None  # inherits "model", sets self.model


@pytest.fixture(scope="module")
def lfm2_checkpoint(tmp_path_factory):
    """A tiny Lfm2 with a convolution layer (state between steps) saved as a checkpoint."""
    import torch
    from transformers import Lfm2Config, Lfm2ForCausalLM

    torch.manual_seed(0)
    config = Lfm2Config(**{**TINY, "layer_types": ["conv", "full_attention"]}, architectures=["Lfm2ForCausalLM"])
    folder = tmp_path_factory.mktemp("lfm2")
    Lfm2ForCausalLM(config).save_pretrained(folder)
    return folder, config


def test_load_time_check_reads_the_module_tree(lfm2_checkpoint, monkeypatch):
    """Without transformers' layer kinds to go by, the built module tree still shows the convolution layer."""
    from llmctl.core.errors import UnsupportedModelError
    from llmctl.model_defs import transformers_backend as tb

    _, config = lfm2_checkpoint
    with pytest.raises(UnsupportedModelError, match="conv layers keep state"):
        tb.TransformersForCausalLM(config)
    monkeypatch.setattr(tb, "_cache_layer_types", lambda config: None)
    with pytest.raises(UnsupportedModelError, match="Lfm2ShortConv layers keep state"):
        tb.TransformersForCausalLM(config)


def test_generate_refuses_with_checks_reason(lfm2_checkpoint):
    from typer.testing import CliRunner

    from llmctl import LLM
    from llmctl.cli.app import app
    from llmctl.core.errors import UnsupportedModelError

    folder, _ = lfm2_checkpoint
    _, data = _check(folder)
    reason = _backend_reason(data).removeprefix("the transformers backend cannot run it: ")
    with pytest.raises(UnsupportedModelError) as info:
        LLM(str(folder), device="cpu", skip_tokenizer_init=True)
    assert reason in str(info.value)
    result = CliRunner().invoke(app, ["generate", "-m", str(folder), "--prompt", "hi", "--max-tokens", "2"])
    assert result.exit_code == 1  # README's exit codes: an error (the model cannot run), not a crash
    assert reason in result.stderr and "Traceback" not in result.stderr
    for impl in ("transformers", "native"):
        result = CliRunner().invoke(app, ["generate", "-m", str(folder), "--prompt", "hi", "--model-impl", impl])
        assert result.exit_code == 1 and "Traceback" not in result.stderr


def test_every_reason_that_applies_is_given(tmp_path):
    # Llama 4's text class keeps its base model under another name than its base_model_prefix, chunked or not.
    llama4 = dict(num_local_experts=4, num_experts_per_tok=1, intermediate_size_mlp=64)
    code, data = _check(_folder(tmp_path, "a", "Llama4ForCausalLM", "llama4_text", **llama4,
                                layer_types=["full_attention"] * 2, attention_chunk_size=None))  # fmt: skip
    assert code == 1 and _backend_reason(data).endswith("Llama4ForCausalLM has no base model / output embedding "
                                                        "llmctl can drive")  # fmt: skip
    code, data = _check(_folder(tmp_path, "b", "Llama4ForCausalLM", "llama4_text", **llama4,
                                layer_types=["chunked_attention", "full_attention"]))  # fmt: skip
    reason = _backend_reason(data)
    assert "chunked_attention layers" in reason and "; Llama4ForCausalLM has no base model" in reason
    assert bf.joined(None, "a", "b", "a") == "a; b" and bf.joined(None, None) is None
