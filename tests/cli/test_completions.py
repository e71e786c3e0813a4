"""completions/ holds scripts generated from the app: regenerate them and fail on drift."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from llmctl.cli.completions import SHELLS, completion_script

COMPLETIONS = Path(__file__).resolve().parents[2] / "completions"


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_checked_in_completion_matches_app(shell):
    checked_in = COMPLETIONS / SHELLS[shell]
    assert checked_in.exists(), f"run `python -m llmctl.cli.completions completions` to write {checked_in.name}"
    assert checked_in.read_text(encoding="utf-8") == completion_script(shell), (
        f"{checked_in.name} is stale: run `python -m llmctl.cli.completions completions`"
    )


def _bash_complete(*words: str) -> list[str]:
    script = COMPLETIONS / SHELLS["bash"]
    quoted = " ".join(f"'{w}'" for w in words)
    cmd = f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _llmctl; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_behaves():
    assert {"check", "inspect-arch", "quantize-info", "generate", "embed", "config"} <= set(_bash_complete("llmctl", ""))
    assert _bash_complete("llmctl", "check", "--ta") == ["--task"]
    assert _bash_complete("llmctl", "check", "--task", "") == ["generate", "embed"]
    assert _bash_complete("llmctl", "config", "") == ["show", "--help"]
    assert "--temperature" in _bash_complete("llmctl", "generate", "--temp")
