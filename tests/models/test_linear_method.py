"""One linear layer for every projection of every family, its method pluggable with no family edit: a model built
under linear_method(m) sends every projection through m, fused norm/activation paths included, and still
matches transformers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmctl.model_defs.layers.linear import UNQUANTIZED, Linear, UnquantizedLinearMethod, linear_method


def _load(name: str):
    # --import-mode=importlib and no __init__.py: helper modules are loaded by path.
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cases, harness = _load("cases"), _load("harness")

# One case per family file (and opt-350m's project_in / project_out).
FAMILIES = ["llama3", "qwen2", "gemma3", "gpt2", "gptj", "neox_parallel", "phi_qk_gqa", "phi3", "opt_350m", "bloom",
            "falcon_40b", "mpt_7b"]  # fmt: skip


class _RecordingMethod(UnquantizedLinearMethod):
    """The unquantized weights applied by plain torch, never fused: what a new method looks like to the families."""

    def __init__(self):
        self.applied: set[int] = set()

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        self.applied.add(id(layer))
        return F.linear(x, layer.weight, layer.bias)

    def fusable(self, layer: Linear) -> bool:
        return False


@pytest.mark.parametrize("name", cases.STRICT)
def test_every_projection_is_the_one_linear_layer(bench, name):
    _, ours, _ = bench.pair(name)
    linears = [m for m in ours.modules() if isinstance(m, nn.Linear)]
    assert not linears, f"plain nn.Linear left in {type(ours).__name__}: {linears[:3]}"
    assert all(m.method is UNQUANTIZED for m in ours.modules() if isinstance(m, Linear))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_method_reaches_every_projection_without_family_edits(bench, name):
    from llmctl.core.engine.loader import build_model, iter_safetensors

    _, _, config = bench.pair(name)
    method = _RecordingMethod()
    path = bench.checkpoint(name)
    with linear_method(method):
        model = build_model(config, harness.model_class(config), torch.float32, "cpu", iter_safetensors(path))
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    assert layers and all(m.method is method for m in layers)
    bench.check_prefill(name, use_cache=True, model=model)  # still transformers' logits
    assert method.applied == {id(m) for m in layers}  # the fused norm / activation paths stepped aside
    assert Linear(4, 2).method is UNQUANTIZED  # the default is back outside the context
