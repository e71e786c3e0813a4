"""Shell completion scripts generated from the app's command tree (completions/ holds checked-in copies).

The scripts are static: every subcommand, option and choice comes from the Typer app, so completing
costs no Python start-up, and a test regenerates them to catch drift.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

SHELLS = {"bash": "llmctl.bash", "zsh": "_llmctl", "fish": "llmctl.fish"}
_HEADER = "# Generated from llmctl's command tree by `python -m llmctl.cli.completions`; do not edit.\n"


@dataclass
class _Opt:
    names: list[str]
    help: str
    choices: list[str]
    takes_value: bool


@dataclass
class _Cmd:
    path: str  # "check", "config show"
    help: str
    options: list[_Opt]
    takes_path: bool


def _tree() -> tuple[list[_Opt], list[_Cmd], dict[str, list[str]]]:
    """(global options, leaf commands, group -> subcommand names) from the Typer app."""
    import typer.main

    from llmctl.cli.app import app

    def options(command) -> list[_Opt]:
        out = []
        for param in command.params:
            if param.param_type_name != "option":  # duck-typed: Typer may vendor its own Click
                continue
            names = [n for n in [*param.opts, *param.secondary_opts] if n.startswith("-")]
            choices = _choices(param)
            help_text = (param.help or "").split("\n")[0].replace("'", "").replace('"', "")
            out.append(_Opt(names, help_text, choices, not getattr(param, "is_flag", False)))
        return out + [_Opt(["--help", "-h"], "Show help and exit.", [], False)]

    root = typer.main.get_command(app)
    commands: list[_Cmd] = []
    groups: dict[str, list[str]] = {"": []}
    for name, command in sorted(root.commands.items()):
        groups[""].append(name)
        subs = getattr(command, "commands", None)
        if subs:
            groups[name] = sorted(subs)
            for sub_name, sub in sorted(subs.items()):
                commands.append(_Cmd(f"{name} {sub_name}", _first_line(sub.help), options(sub), False))
        else:
            takes_path = any(p.param_type_name == "argument" for p in command.params)
            commands.append(_Cmd(name, _first_line(command.help), options(command), takes_path))
    return options(root), commands, groups


def _choices(param) -> list[str]:
    """An option's fixed values: from its Enum annotation (Typer) or its Click Choice type."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(member.value) for member in annotation]
    return [str(c) for c in (getattr(getattr(param, "type", None), "choices", None) or [])]


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n")[0].replace("'", "").replace('"', "")


def _bash() -> str:
    globals_, commands, groups = _tree()
    lines = [
        _HEADER,
        "_llmctl() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" path="" i word',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        word="${COMP_WORDS[i]}"',
        '        case "$word" in -*) continue ;; esac',
        '        case "$path" in',
    ]
    for group, subs in groups.items():
        key = group or ""
        joined = "|".join(subs)
        lines.append(f'            "{key}") case "$word" in {joined}) path="${{path:+$path }}$word" ;; esac ;;')
    lines += ["        esac", "    done", '    case "$path" in']
    for command in commands:
        value_opts = [o for o in command.options if o.takes_value]
        words = " ".join(n for o in command.options for n in o.names)
        lines.append(f'        "{command.path}")')
        lines.append('            case "$prev" in')
        for opt in value_opts:
            if opt.choices:
                lines.append(f'                {"|".join(opt.names)}) COMPREPLY=($(compgen -W "{" ".join(opt.choices)}" -- "$cur")); return ;;')
            else:
                lines.append(f'                {"|".join(opt.names)}) COMPREPLY=($(compgen -f -- "$cur")); return ;;')
        lines.append("            esac")
        lines.append(f'            COMPREPLY=($(compgen -W "{words}" -- "$cur"))')
        if command.takes_path:
            lines.append('            [[ "$cur" != -* ]] && COMPREPLY+=($(compgen -f -- "$cur"))')
        lines.append("            ;;")
    for group, subs in groups.items():
        extra = " ".join(n for o in globals_ for n in o.names) if group == "" else "--help"
        lines.append(f'        "{group}") COMPREPLY=($(compgen -W "{" ".join(subs)} {extra}" -- "$cur")) ;;')
    lines += ["    esac", "}", "complete -o default -F _llmctl llmctl", ""]
    return "\n".join(lines)


def _zsh() -> str:
    return "\n".join([
        "#compdef llmctl",
        _HEADER,
        "autoload -U +X bashcompinit && bashcompinit",
        _bash().replace(_HEADER, ""),
    ])


def _fish() -> str:
    globals_, commands, groups = _tree()
    lines = [_HEADER, "complete -c llmctl -f"]
    for opt in globals_:
        lines.append(_fish_opt("__fish_use_subcommand", opt))
    for command in commands:
        parts = command.path.split(" ")
        if len(parts) == 1:
            lines.append(f"complete -c llmctl -n '__fish_use_subcommand' -a {parts[0]} -d '{command.help}'")
            cond = f"__fish_seen_subcommand_from {parts[0]}"
        else:
            group, sub = parts
            siblings = " ".join(groups[group])
            lines.append(f"complete -c llmctl -n '__fish_seen_subcommand_from {group}; and not __fish_seen_subcommand_from {siblings}' -a {sub} -d '{command.help}'")
            cond = f"__fish_seen_subcommand_from {sub}"
        for opt in command.options:
            lines.append(_fish_opt(cond, opt))
        if command.takes_path:
            lines.append(f"complete -c llmctl -n '{cond}' -F")
    for group in groups:
        if group:
            lines.append(f"complete -c llmctl -n '__fish_use_subcommand' -a {group} -d '{group} commands'")
    return "\n".join(lines) + "\n"


def _fish_opt(condition: str, opt: _Opt) -> str:
    flags = []
    for name in opt.names:
        flags.append(f"-l {name[2:]}" if name.startswith("--") else f"-s {name[1:]}")
    value = ""
    if opt.choices:
        value = f" -xa '{' '.join(opt.choices)}'"
    elif opt.takes_value:
        value = " -r"
    return f"complete -c llmctl -n '{condition}' {' '.join(flags)}{value} -d '{opt.help}'"


_GENERATORS = {"bash": _bash, "zsh": _zsh, "fish": _fish}


def completion_script(shell: str) -> str:
    if shell not in _GENERATORS:
        raise ValueError(f"unsupported shell {shell!r}: use {', '.join(_GENERATORS)}")
    return _GENERATORS[shell]()


def write_all(directory: str | Path) -> list[Path]:
    written = []
    for shell, filename in SHELLS.items():
        path = Path(directory) / filename
        path.write_text(completion_script(shell), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all(sys.argv[1] if len(sys.argv) > 1 else "completions"):
        print(path)
