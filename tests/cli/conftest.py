"""Fixtures for command-line tests: a CliRunner and tiny model folders written as hub checkpoints store them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def write_model(path: Path, config: dict | None = None, **files) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    for name, content in files.items():
        target = path / name.replace("__", "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.fixture
def model_writer():
    return write_model


@pytest.fixture
def llama_config() -> dict:
    return dict(LLAMA_CONFIG)


@pytest.fixture
def llama_dir(tmp_path) -> Path:
    return write_model(tmp_path / "tiny-llama", LLAMA_CONFIG)


class Result:
    def __init__(self, result):
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def run_cli():
    from llmctl.cli.app import app

    runner = CliRunner()

    def run(*args, input=None) -> Result:
        return Result(runner.invoke(app, [str(a) for a in args], input=input))

    return run
