"""Metadata commands never import torch, transformers or triton (they must feel instant)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "triton")


def _imported_modules(args, env_extra=None) -> tuple[set[str], subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "llmctl", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            modules.add(name.split(".")[0])
    return modules, proc


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["check", "{llama}", "--json"],
        ["inspect-arch", "{llama}", "--json"],
        ["quantize-info", "{llama}", "--json"],
        ["check", "smollm2-135m-instruct", "--json"],
        ["inspect-arch", "smollm2-135m-instruct", "--json"],
        ["quantize-info", "smollm2-135m-instruct", "--json"],
        ["check", "all-minilm-l6-v2", "--json"],
        ["generate", "--help"],
    ],
)
def test_no_heavy_imports(args, llama_dir):
    args = [str(llama_dir) if a == "{llama}" else a for a in args]
    modules, proc = _imported_modules(args)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert modules, "PYTHONPROFILEIMPORTTIME produced no import lines"
    heavy = sorted(m for m in modules if m in HEAVY)
    assert not heavy, f"{args} imported {heavy}"
