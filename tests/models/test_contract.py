"""The model contract (model_defs/base.py): every native family declares it, the KV-cache layout comes from the
attention layers built (and agrees with what `check` reads from config.json), one weights mapper serves
generation and embedding checkpoints alike, and the fused rope path belongs to the attention layer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from llmctl.core.errors import UnsupportedModelError
from llmctl.model_defs.base import CausalLM, EmbeddingModel, kv_cache_shape_of
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.weights_mapper import WeightsMapper


def _load(name: str):
    # --import-mode=importlib and no __init__.py: helper modules are loaded by path.
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cases, harness = _load("cases"), _load("harness")


def _native_classes(task: str) -> dict:
    from llmctl.core.registry import all_architectures, load_model_class

    return {row.architecture: load_model_class(row) for row in all_architectures()
            if row.status == "native" and task in row.tasks}  # fmt: skip


def test_every_native_class_declares_the_contract():
    from llmctl.core.registry import EMBED, GENERATE

    generate = _native_classes(GENERATE)
    assert {"LlamaForCausalLM", "GPT2LMHeadModel", "FalconForCausalLM", "GemmaForCausalLM"} <= set(generate)
    for arch, cls in generate.items():
        assert issubclass(cls, CausalLM), arch
        assert isinstance(cls.weights_mapper, WeightsMapper), arch
        assert cls.forward is CausalLM.forward, arch  # one wrapper for every family
    embed = _native_classes(EMBED)
    assert {"BertModel", "Qwen3Model"} <= set(embed)
    for arch, cls in embed.items():
        assert issubclass(cls, EmbeddingModel), arch
        assert isinstance(cls.weights_mapper, WeightsMapper) and isinstance(cls.is_causal, bool), arch


@pytest.mark.parametrize("name", cases.STRICT)
def test_kv_layout_from_the_layers_matches_check(bench, name):
    """What the engine allocates (read from the model's attention layers) is what `check` reports from config.json."""
    from llmctl.core.engine.kv_cache import kv_cache_spec
    from llmctl.core.spec import spec_from_config

    _, ours, config = bench.pair(name)
    attn = [m for m in ours.modules() if isinstance(m, Attention)]
    assert ours.kv_cache_shape() == (len(attn), attn[0].num_kv_heads, attn[0].head_dim)
    spec = kv_cache_spec(ours, torch.float16)
    meta = spec_from_config(config.to_dict())
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == (meta.num_layers, meta.num_kv_heads, meta.head_dim)


class _TwoLayers(nn.Module):
    def __init__(self, shapes, layer_ids=(0, 1)):
        super().__init__()
        self.layers = nn.ModuleList(
            [Attention(heads, head_dim, 1.0, kv, i) for (heads, kv, head_dim), i in zip(shapes, layer_ids)]
        )


def test_kv_layout_refuses_layers_it_cannot_share_one_cache_shape_between():
    assert kv_cache_shape_of(_TwoLayers([(4, 2, 8), (4, 2, 8)])) == (2, 2, 8)
    with pytest.raises(UnsupportedModelError, match="differ in"):
        kv_cache_shape_of(_TwoLayers([(4, 2, 8), (4, 1, 8)]))
    with pytest.raises(UnsupportedModelError, match="numbered"):
        kv_cache_shape_of(_TwoLayers([(4, 2, 8), (4, 2, 8)], layer_ids=(0, 2)))
    with pytest.raises(UnsupportedModelError, match="no attention layer"):
        kv_cache_shape_of(nn.Linear(2, 2))


def test_weights_mapper_order_and_inverse():
    mapper = WeightsMapper(
        strip_prefixes=("bert.", "roberta."),
        ignored_prefixes=("pooler.",),
        ignored_suffixes=(".attn.bias",),
        renamed_suffixes={".gamma": ".weight"},
        base_prefix="transformer",
        packed={"q_proj": ("qkv_proj", "q"), "gate_proj": ("gate_up_proj", 0)},
    )
    params = {"transformer.h.0.qkv_proj.weight", "ln.weight", "layer.0.gate_up_proj.weight"}
    assert mapper.target("roberta.pooler.dense.weight", params) is None  # stripped, then ignored
    assert mapper.target("h.0.attn.bias", params) is None
    assert mapper.target("x.rotary_emb.inv_freq", params) is None  # never a weight, whatever the model says
    assert mapper.target("bert.ln.gamma", params) == ("ln.weight", None)
    assert mapper.target("h.0.q_proj.weight", params) == ("transformer.h.0.qkv_proj.weight", "q")  # base prefix
    assert mapper.target("layer.0.gate_proj.weight", params) == ("layer.0.gate_up_proj.weight", 0)
    assert mapper.target("unknown.weight", params) == ("unknown.weight", None)  # the loader names it unexpected
    assert mapper.checkpoint_name("layer.0.gate_up_proj.weight", 0) == "layer.0.gate_proj.weight"
    assert mapper.checkpoint_name("ln.weight", None) == "ln.weight"


def test_a_family_declares_only_its_differences():
    """A new family: a backbone and the names that differ; the base builds, ties and runs it."""
    from llmctl.model_defs.layers.embedding import VocabEmbedding

    class TinyModel(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.wte = VocabEmbedding(config.vocab_size, config.hidden_size)
            self.attn = Attention(2, 4, 0.5, 1, 0)

        def forward(self, input_ids, positions, ctx):
            return self.wte(input_ids)

    class TinyForCausalLM(CausalLM):
        backbone_cls = TinyModel
        backbone_name = "transformer"
        input_embedding_name = "wte"
        tie_word_embeddings_default = True

    class Config:
        vocab_size, hidden_size = 10, 8

    model = TinyForCausalLM(Config())
    assert model.lm_head.weight is model.transformer.wte.weight  # the config says nothing: the family default
    assert model.kv_cache_shape() == (1, 1, 4)
    with torch.no_grad():
        model.transformer.wte.weight.copy_(torch.randn(10, 8))
    hidden = model(torch.tensor([1, 2]), torch.arange(2), None)
    torch.testing.assert_close(model.compute_logits(hidden), hidden @ model.transformer.wte.weight.T)


@pytest.mark.parametrize("name", cases.STRICT)
def test_every_rotary_family_hands_its_rope_to_the_attention_layer(bench, name, monkeypatch):
    """The fused path (rope, cache write and attention in one kernel) is the layer's, so every family gets it."""
    from llmctl.model_defs.layers.rotary import RotaryEmbedding

    _, ours, _ = bench.pair(name)
    has_rope = any(isinstance(m, RotaryEmbedding) for m in ours.modules())
    handed, forward = [], Attention.forward

    def spy(self, q, k, v, ctx, rope=None, positions=None):
        handed.append(rope is not None and positions is not None)
        return forward(self, q, k, v, ctx, rope=rope, positions=positions)

    monkeypatch.setattr(Attention, "forward", spy)
    harness.one_shot_logits(ours, [3, 1, 4, 1, 5])
    assert handed and all(h == has_rope for h in handed)
