"""Session fixtures of tests/models: the Bench over every tiny checkpoint of cases.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _load(name: str):
    # --import-mode=importlib and no __init__.py: helper modules are loaded by path.
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench(tmp_path_factory):
    """harness.Bench over cases.CASES: checkpoints, model pairs and transformers' greedy runs, built once."""
    return _load("harness").Bench(_load("cases").CASES, tmp_path_factory)

