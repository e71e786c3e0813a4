"""Family key aliases and defaults read from transformers' config classes as source text (4.x and 5.x styles)."""

from __future__ import annotations

import textwrap

import pytest

from llmctl.core import config_classes
from llmctl.core.config_classes import config_class_facts
from llmctl.core.spec import spec_from_config


@pytest.fixture
def fake_transformers(tmp_path, monkeypatch):
    """A transformers models/ folder holding only the files a test writes."""
    models = tmp_path / "transformers" / "models"
    (models / "auto").mkdir(parents=True)

    def write(relative: str, source: str) -> None:
        path = models / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))

    monkeypatch.setattr(config_classes, "_transformers_models_dir", lambda: models)
    config_class_facts.cache_clear()
    config_classes._parse.cache_clear()
    yield write
    config_class_facts.cache_clear()
    config_classes._parse.cache_clear()


def test_dataclass_style_config_with_a_base_from_another_module(fake_transformers):
    # transformers 5: defaults are annotated class attributes; the tables live in auto_mappings.py
    fake_transformers("auto/auto_mappings.py", '''
        CONFIG_MAPPING_NAMES = OrderedDict([("toy_base", "ToyBaseConfig"), ("toy-moe_text", "ToyMoeTextConfig")])
        SPECIAL_MODEL_TYPE_TO_MODULE_NAME = OrderedDict([("toy-moe_text", "toy_moe")])
    ''')
    fake_transformers("toy_base/configuration_toy_base.py", '''
        class ToyBaseConfig(PreTrainedConfig):
            attribute_map = {"hidden_size": "dim"}
            dim: int = 64
            n_layers: int = 3
            head_dim: int | None = None
    ''')
    fake_transformers("toy_moe/configuration_toy_moe.py", '''
        from ..toy_base.configuration_toy_base import ToyBaseConfig

        class ToyMoeTextConfig(ToyBaseConfig):
            attribute_map = {"num_experts_per_tok": "top_k_experts", "num_hidden_layers": "n_layers",
                             "num_local_experts": "n_experts"}
            n_layers: int = 6
            top_k_experts: int = 2
            num_local_experts: int = 32  # declared under the common name, stored as n_experts
            rope_parameters: dict = field(default_factory=dict)
    ''')
    facts = config_class_facts("toy-moe_text")
    assert facts.class_name == "ToyMoeTextConfig"
    assert facts.attribute_map == {"hidden_size": "dim", "num_experts_per_tok": "top_k_experts",
                                   "num_hidden_layers": "n_layers", "num_local_experts": "n_experts"}
    assert facts.defaults == {"dim": 64, "n_layers": 6, "top_k_experts": 2, "n_experts": 32}  # no None, no expressions
    spec = spec_from_config({"architectures": ["ToyMoeForCausalLM"], "model_type": "toy-moe_text",
                             "num_attention_heads": 4, "vocab_size": 100, "n_experts": 8, "top_k_experts": 3})
    assert (spec.hidden_size, spec.num_layers, spec.head_dim) == (64, 6, 16)
    assert (spec.moe.num_experts, spec.moe.experts_per_token) == (8, 3)  # the file's values, not the defaults


def test_init_style_config(fake_transformers):
    # transformers 4: defaults are __init__ keyword arguments; the tables live in configuration_auto.py
    fake_transformers("auto/configuration_auto.py", '''
        CONFIG_MAPPING_NAMES = OrderedDict([("oldie", "OldieConfig")])
    ''')
    fake_transformers("oldie/configuration_oldie.py", '''
        class OldieConfig(PretrainedConfig):
            attribute_map = {"num_attention_heads": "n_head"}

            def __init__(self, vocab_size=500, n_embd=32, n_layer=2, n_head=4, *, extra=None, **kwargs):
                super().__init__(**kwargs)
    ''')
    facts = config_class_facts("oldie")
    assert facts.defaults == {"vocab_size": 500, "n_embd": 32, "n_layer": 2, "n_head": 4}
    spec = spec_from_config({"architectures": ["OldieForCausalLM"], "model_type": "oldie", "n_head": 8})
    assert (spec.hidden_size, spec.num_layers, spec.num_attention_heads, spec.vocab_size) == (32, 2, 8, 500)


def test_no_class_no_facts(fake_transformers, monkeypatch):
    assert config_class_facts("nothing_here").attribute_map == {}
    monkeypatch.setattr(config_classes, "_transformers_models_dir", lambda: None)  # transformers not installed
    config_class_facts.cache_clear()
    assert config_class_facts("llama").defaults == {}
