"""Session fixtures of tests/models: the Bench over every tiny checkpoint of cases.py, one torch thread."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


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


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models are tiny: one thread avoids oversubscribing the shared 2-core CI box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
