"""Names that lead nowhere say why: symlink loops, links to nothing, revisions not in the cache, alias chains."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llmctl.core.errors import ConfigError, ModelNotFoundError, ModelReadError
from llmctl.core.resolve import resolve_model
from llmctl.core.settings import load_settings


def test_symlink_loop_is_named(tmp_path, run_cli, monkeypatch):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    monkeypatch.chdir(tmp_path.parent)
    for name in (str(loop), f"{tmp_path.name}/loop"):  # a path, and a name shaped like a repo id
        result = run_cli("check", name)
        assert result.exit_code == 3, result.stderr
        assert "symbolic link loop" in result.stderr and "cache" not in result.stderr


def test_link_to_nothing_is_named(tmp_path):
    link = tmp_path / "model"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ModelNotFoundError, match="symbolic link to .*gone.*does not exist"):
        resolve_model(str(link))


def test_config_json_link_loop_is_not_a_missing_config(tmp_path, run_cli):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").symlink_to(folder / "config.json")
    result = run_cli("inspect-arch", folder)
    assert result.exit_code == 3
    assert "symbolic link that leads nowhere" in result.stderr and "has no config.json" not in result.stderr


def test_a_missing_revision_of_a_cached_repo_names_the_revision(tmp_path, llama_config):
    hub = tmp_path / "hf" / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = hub / "models--org--tiny" / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(llama_config))
    (hub / "models--org--tiny" / "refs").mkdir()
    (hub / "models--org--tiny" / "refs" / "main").write_text(commit)
    # huggingface_hub reads HF_HOME when it is first imported: run in a fresh interpreter.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "llmctl", "check", "org/tiny@v2.0"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert "not at revision 'v2.0'" in out.stderr and "main" in out.stderr, out.stderr
    ok = subprocess.run([sys.executable, "-m", "llmctl", "check", "org/tiny@main", "--json"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr


def _settings(tmp_path, monkeypatch, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    monkeypatch.setenv("LLMCTL_CONFIG", str(path))
    return load_settings()


def test_aliases_chain_to_builtin_and_user_aliases(tmp_path, monkeypatch, llama_dir):
    settings = _settings(tmp_path, monkeypatch, f"aliases:\n  mine: smol\n  smol: smollm2-135m-instruct\n"
                                                f"  a: b\n  b: {llama_dir}\n")
    assert settings.alias_target("mine") == settings.aliases["smollm2-135m-instruct"]  # through a built-in alias
    assert resolve_model("a", settings=settings).path == llama_dir.resolve()
    assert settings.alias_target("not-an-alias") is None


@pytest.mark.parametrize("aliases,loop", [
    ("a: b\n  b: a", "a -> b -> a"),
    ("x: x", "x -> x"),
    ("p: q\n  q: r\n  r: q", "q -> r -> q"),
])
def test_alias_loops_are_a_config_error(tmp_path, monkeypatch, run_cli, aliases, loop):
    settings = _settings(tmp_path, monkeypatch, f"aliases:\n  {aliases}\n")
    start = aliases.split(":")[0]
    with pytest.raises(ConfigError, match=loop):
        resolve_model(start, settings=settings)
    result = run_cli("check", start)
    assert result.exit_code == 2 and "alias loop" in result.stderr and loop in result.stderr


@pytest.mark.parametrize("device", ["tpu", "cuda:-1", "cpu:0", ""])
def test_config_file_device_is_checked(tmp_path, monkeypatch, device):
    with pytest.raises(ConfigError, match="device"):
        _settings(tmp_path, monkeypatch, f"device: '{device}'\n")


def test_unreadable_name_characters_are_not_found(tmp_path):
    with pytest.raises((ModelNotFoundError, ModelReadError)):
        resolve_model("~no-such-user-here/model")
    with pytest.raises(ModelNotFoundError):
        resolve_model("./bad\0name")
