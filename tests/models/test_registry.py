"""The registry covers vLLM's list, and no row claims more than exists: native rows import, strict rows are tested."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

from llmctl.core.registry import (
    CLASSIFY,
    EMBED,
    GENERATE,
    KINDS,
    LEVELS,
    TASKS,
    ArchInfo,
    all_architectures,
    get_arch,
    load_model_class,
)
from llmctl.core.errors import UnsupportedModelError

TESTS = Path(__file__).resolve().parents[1]
ROWS = all_architectures()

# The project's model list: vLLM's supported architectures, snapshotted with the commit they were read at.
VLLM = json.loads((Path(__file__).with_name("vllm_architectures.json")).read_text(encoding="utf-8"))
VLLM_TASKS = {  # vLLM's table -> the task llmctl's row names for it
    "_TEXT_GENERATION_MODELS": GENERATE, "_MULTIMODAL_MODELS": GENERATE, "_TRANSFORMERS_SUPPORTED_MODELS": GENERATE,
    "_EMBEDDING_MODELS": EMBED, "_CROSS_ENCODER_MODELS": CLASSIFY,
}


def _vllm_tasks() -> dict[str, set[str]]:
    tasks: dict[str, set[str]] = {}
    for table, task in VLLM_TASKS.items():
        for arch in VLLM[table]:
            tasks.setdefault(arch, set()).add(task)
    return tasks


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


def test_every_vllm_architecture_has_a_row():
    assert VLLM["commit"] and VLLM["source"].endswith("registry.py")
    listed = _vllm_tasks()
    assert len(listed) > 200  # the snapshot is the whole list, not a sample
    names = {row.architecture for row in ROWS}
    assert not set(listed) - names, sorted(set(listed) - names)


def test_planned_rows_carry_the_lists_tasks():
    # A planned row offers what vLLM offers for it; a native row says what llmctl itself runs.
    for arch, tasks in _vllm_tasks().items():
        row = get_arch(arch)
        if row.status == "planned":
            assert set(row.tasks) == tasks, (arch, row.tasks, tasks)


def test_rows_are_unique_and_valid():
    assert len({row.architecture for row in ROWS}) == len(ROWS)
    for row in ROWS:
        assert row.kind in KINDS and set(row.tasks) <= set(TASKS), row


def test_a_bad_planned_line_is_rejected():
    with pytest.raises(ValueError):
        ArchInfo("XForCausalLM", "x", ("generate",), kind="state-space")
    with pytest.raises(ValueError):
        ArchInfo("XForCausalLM", "x", ("chat",))


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
