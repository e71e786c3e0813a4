"""A plain (non-editable) install works: build a wheel, install it into a throwaway venv, run `llmctl --help`."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("llmctl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.startswith("llmctl-")}
    assert top_level == {"llmctl"}, f"wheel ships generic top-level packages: {top_level}"
    for sub in ("cli", "core", "core/engine", "kernels", "model_defs", "model_defs/layers"):
        assert f"llmctl/{sub}/__init__.py" in names
    assert not any(n.startswith("llmctl/tests/") for n in names)

    venv = tmp_path / "venv"
    # The venv sees this interpreter's packages (torch etc.) but its own llmctl comes from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import llmctl; print(llmctl.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, env=env, timeout=120)
    assert str(venv) in where.stdout, where.stdout + where.stderr
    helped = subprocess.run([str(venv / "bin" / "llmctl"), "--help"], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert "inspect-arch" in helped.stdout and "quantize-info" in helped.stdout
