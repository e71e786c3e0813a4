"""The README's two set-up commands stay true: CI runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_exactly_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    main, tests = commands
    assert "llmctl generate --prompt" in main
    assert "pytest" in tests


def test_ci_runs_both_readme_commands_in_a_fresh_virtualenv():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = ci.splitlines()
    main, tests = _setup_commands()
    assert main in lines and tests in lines and lines.index(main) < lines.index(tests)
    # A fresh virtualenv, activated before anything is installed: what a newcomer's machine has.
    venv = next(i for i, line in enumerate(lines) if re.match(r"python3 -m venv ", line))
    activate = next(i for i, line in enumerate(lines) if re.match(r"(source|\.) .*bin/activate", line))
    first_install = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert venv < activate < first_install
    # torch 2.13.0 (the CPU build on disk) goes in before the project.
    assert ci.index("torch==2.13.0") < ci.index('-e ".[test]"')
