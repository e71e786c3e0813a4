"""Shell completion scripts, generated from the app (completions/ holds the checked-in copies)."""

from __future__ import annotations

SHELLS = {"bash": "llmctl.bash", "zsh": "_llmctl", "fish": "llmctl.fish"}
COMPLETE_VAR = "_LLMCTL_COMPLETE"


def completion_script(shell: str) -> str:
    """The script `shell` sources; it calls back into llmctl (click's protocol) for the candidates."""
    import typer.main
    from click.shell_completion import get_completion_class

    from llmctl.cli.app import app

    cls = get_completion_class(shell)
    if cls is None:
        raise ValueError(f"unsupported shell {shell!r}")
    command = typer.main.get_command(app)
    return cls(command, {}, "llmctl", COMPLETE_VAR).source()


def write_all(directory) -> list[str]:
    from pathlib import Path

    written = []
    for shell, filename in SHELLS.items():
        path = Path(directory) / filename
        path.write_text(completion_script(shell), encoding="utf-8")
        written.append(str(path))
    return written


if __name__ == "__main__":
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "completions"
    for path in write_all(target):
        print(path)
