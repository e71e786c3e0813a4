"""A plain (non-editable) install works: build a wheel, install it into a throwaway venv, run `llmctl --help`."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
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
    # cli/, core/, kernels/ and model_defs/ are namespace folders (no __init__.py, see test_root_imports.py):
    # the wheel must still carry their modules.
    for module in ("cli/app.py", "core/spec.py", "core/engine/llm.py", "kernels/rmsnorm.py", "model_defs/llama.py",
                   "model_defs/layers/linear.py"):
        assert f"llmctl/{module}" in names, f"wheel lacks llmctl/{module}"
    assert not any(n.startswith("llmctl/tests/") for n in names)

    venv = tmp_path / "venv"
    # The venv sees this interpreter's packages (torch, typer, ...) through a .pth file naming its site-packages
    # (--system-site-packages would show the base interpreter's, which lacks them when the tests run in a
    # virtualenv); a path added by a .pth file is not scanned for .pth files itself, so the editable llmctl
    # install stays out and the venv's own llmctl comes from the wheel.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    venv_site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    outer = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    Path(venv_site, "outer-site-packages.pth").write_text("".join(f"{p}\n" for p in sorted(outer)))
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
