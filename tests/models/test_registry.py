"""No registry row claims more than exists: native rows import, strict rows have a consistency test."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from llmctl.core.registry import LEVELS, all_architectures, get_arch, load_model_class
from llmctl.core.errors import UnsupportedModelError

TESTS = Path(__file__).resolve().parents[1]
ROWS = all_architectures()

# Every architecture of the project's model list (vLLM's supported-models page) has a row.
MODEL_LIST = [
    "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
    "Qwen2MoeForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "DeepseekForCausalLM", "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM", "GPT2LMHeadModel", "GPTJForCausalLM", "GPTNeoXForCausalLM", "OPTForCausalLM",
    "BloomForCausalLM", "FalconForCausalLM", "MPTForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM",
    "BaichuanForCausalLM", "InternLMForCausalLM", "InternLM2ForCausalLM", "ChatGLMModel",
    "ChatGLMForConditionalGeneration", "BertModel", "XLMRobertaModel", "MistralModel",
    "LlavaForConditionalGeneration", "Qwen2VLForConditionalGeneration", "InternVLChatModel", "Phi3VForCausalLM",
    "BartForConditionalGeneration", "T5ForConditionalGeneration",
]  # fmt: skip


def _consistency_architectures() -> set[str]:
    """Architecture strings listed in CONSISTENCY_ARCHITECTURES by any test module."""
    found: set[str] = set()
    for path in TESTS.rglob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "CONSISTENCY_ARCHITECTURES" for t in node.targets
            ):
                found.update(ast.literal_eval(node.value))
    return found


def test_model_list_is_covered():
    names = {row.architecture for row in ROWS}
    assert set(MODEL_LIST) <= names, sorted(set(MODEL_LIST) - names)


@pytest.mark.parametrize("row", [r for r in ROWS if r.status == "native"], ids=lambda r: r.architecture)
def test_native_rows_import(row):
    cls = load_model_class(row)
    assert cls.__name__ == row.architecture
    assert importlib.import_module(row.module) is not None


@pytest.mark.parametrize("row", [r for r in ROWS if r.level == "strict"], ids=lambda r: r.architecture)
def test_strict_rows_have_consistency_tests(row):
    assert row.architecture in _consistency_architectures(), (
        f"{row.architecture} claims strict but no test lists it in CONSISTENCY_ARCHITECTURES"
    )


def test_planned_rows_claim_nothing():
    for row in ROWS:
        assert row.level in LEVELS
        if row.status == "planned":
            assert row.level == "none" and row.module is None
            with pytest.raises(UnsupportedModelError):
                load_model_class(row)


def test_unknown_architecture_error_names_alternatives():
    with pytest.raises(UnsupportedModelError) as info:
        get_arch("LlamaForCausalLMX")
    assert "LlamaForCausalLM" in (info.value.hint or "")
