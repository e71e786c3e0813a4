"""The real-size config.json fixtures under tests/fixtures/bench_configs: they load, and llmctl builds them natively.

Cheap: models are built on the meta device (shapes only, no memory, no weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmctl.cli.check import check

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "bench_configs"
# folder -> (architecture, model_type, task)
FIXTURES = {
    "bge-large-en-v1.5": ("BertModel", "bert", "embed"),
    "gemma-7b": ("GemmaForCausalLM", "gemma", "generate"),
    "gemma-2-9b": ("Gemma2ForCausalLM", "gemma2", "generate"),
    "gemma-3-4b-it-text": ("Gemma3ForCausalLM", "gemma3_text", "generate"),
    "phi-2": ("PhiForCausalLM", "phi", "generate"),
    "phi-3-mini-4k-instruct": ("Phi3ForCausalLM", "phi3", "generate"),
    "gpt2-xl": ("GPT2LMHeadModel", "gpt2", "generate"),
    "gpt-j-6b": ("GPTJForCausalLM", "gptj", "generate"),
    "pythia-6.9b": ("GPTNeoXForCausalLM", "gpt_neox", "generate"),
    "opt-6.7b": ("OPTForCausalLM", "opt", "generate"),
    "bloom-7b1": ("BloomForCausalLM", "bloom", "generate"),
    "falcon-7b": ("FalconForCausalLM", "falcon", "generate"),
    "mpt-7b": ("MPTForCausalLM", "mpt", "generate"),
    "starcoder2-3b": ("Starcoder2ForCausalLM", "starcoder2", "generate"),
    "olmo-2-1124-7b": ("Olmo2ForCausalLM", "olmo2", "generate"),
    "granite-3.0-2b-instruct": ("GraniteForCausalLM", "granite", "generate"),
}
# Published parameter counts (issue 6 for gemma-7b and Phi-3-mini; the GPT-2 and Pythia papers' model tables).
PUBLISHED_PARAMS = {
    "gemma-7b": 8_537_680_896,
    "phi-3-mini-4k-instruct": 3_821_079_552,
    "gpt2-xl": 1_557_611_200,
    "pythia-6.9b": 6_857_302_016,
}


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("check")(check)
    app.command("other")(lambda: None)
    return app


def test_every_fixture_folder_is_listed():
    assert {p.name for p in ROOT.iterdir() if (p / "config.json").is_file()} >= set(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_loads_and_builds_natively(name):
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from llmctl.core.bench import bench_task

    arch, model_type, task = FIXTURES[name]
    raw = json.loads((ROOT / name / "config.json").read_text())
    assert raw["architectures"] == [arch] and raw["model_type"] == model_type
    config = AutoConfig.from_pretrained(str(ROOT / name))
    assert config.model_type == model_type
    got_task, model_cls = bench_task(config)
    assert got_task == task
    # llmctl's model_def and transformers' class hold the same parameters (BertModel: transformers adds a pooler)
    with torch.device("meta"):
        ours = model_cls(config)
        ref = (AutoModelForCausalLM if task == "generate" else AutoModel).from_config(config)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("pooler."))
    assert n_ours == n_ref
    if name in PUBLISHED_PARAMS:
        assert n_ours == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_check_says_native(name):
    res = CliRunner().invoke(_app(), ["check", str(ROOT / name), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["supported"] is True and data["implementation"] == "native"
    assert data["architecture"] == FIXTURES[name][0] and data["needs_trust_remote_code"] is False
