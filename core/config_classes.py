"""transformers' config classes read as source text (never imported): each family's key aliases and defaults."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from llmctl.core.registry import _read, _transformers_models_dir


@dataclass(frozen=True, slots=True)
class ConfigClassFacts:
    """What a family's config class says beyond config.json: `attribute_map` (the common name -> the attribute
    the family stores it under, e.g. Ernie-4.5-MoE num_experts_per_tok -> moe_k) and its literal defaults."""

    class_name: str | None = None
    attribute_map: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)


def _auto_text(models: Path) -> str:
    # transformers 5.x keeps the model_type tables in auto_mappings.py; 4.x in configuration_auto.py
    return _read(models / "auto" / "auto_mappings.py") + _read(models / "auto" / "configuration_auto.py")


def _mapped(text: str, model_type: str, *, config: bool) -> str | None:
    """The value of `("model_type", "...")` (or `"model_type": "..."`) in an auto table: a class name or a module."""
    key = re.escape(model_type)
    for match in re.finditer(rf'(?:\(\s*"{key}",\s*|"{key}":\s*)"([\w.]+)"', text):
        if match.group(1).endswith("Config") == config:
            return match.group(1)
    return None


@lru_cache(maxsize=128)
def config_class_facts(model_type: str) -> ConfigClassFacts:
    """The facts of `model_type`'s config class in the installed transformers; empty ones when it has none."""
    models = _transformers_models_dir()
    if models is None or not model_type:
        return ConfigClassFacts()
    text = _auto_text(models)
    class_name = _mapped(text, model_type, config=True)
    if class_name is None:
        return ConfigClassFacts()
    module = _mapped(text, model_type, config=False) or model_type.replace("-", "_")
    for path in sorted((models / module).glob("configuration_*.py")):
        facts = _facts(path, class_name, depth=0)
        if facts is not None:
            attribute_map, declared = facts
            # A field declared under a common name is stored under the name attribute_map gives it (Kimi-Linear's
            # num_experts_per_tok = 8 lands in num_experts_per_token), and config.json holds it there.
            defaults = {attribute_map.get(key, key): value for key, value in declared.items()
                        if key not in attribute_map or attribute_map[key] not in declared}
            return ConfigClassFacts(class_name, attribute_map, defaults)
    return ConfigClassFacts(class_name)


def _facts(path: Path, class_name: str, depth: int) -> tuple[dict, dict] | None:
    """(attribute_map, defaults) of `class_name` in `path`, its base classes' first (a subclass overrides)."""
    source = _read(path)
    if f"class {class_name}(" not in source or depth > 4:
        return None
    tree = _parse(path)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if node is None:
        return None
    attribute_map: dict[str, str] = {}
    defaults: dict[str, Any] = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id not in ("PreTrainedConfig", "PretrainedConfig"):
            inherited = _facts(_defining_file(tree, path, base.id), base.id, depth + 1)
            if inherited is not None:
                attribute_map.update(inherited[0])
                defaults.update(inherited[1])
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            _literal(stmt.target.id, stmt.value, defaults)
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            if stmt.targets[0].id == "attribute_map":
                value = _literal_value(stmt.value)
                if isinstance(value, dict):
                    attribute_map.update({str(k): str(v) for k, v in value.items()})
        elif isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":  # transformers 4.x: keyword defaults
            args = stmt.args
            for arg, value in zip(args.args[len(args.args) - len(args.defaults):], args.defaults):
                _literal(arg.arg, value, defaults)
            for arg, value in zip(args.kwonlyargs, args.kw_defaults):
                if value is not None:
                    _literal(arg.arg, value, defaults)
    return attribute_map, defaults


def _defining_file(tree: ast.Module, path: Path, name: str) -> Path:
    """The file a base class comes from: this one, or the sibling module a relative import names."""
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.level and any(a.name == name for a in stmt.names):
            parts = (stmt.module or "").split(".")
            base = path.parent
            for _ in range(stmt.level - 1):
                base = base.parent
            return base.joinpath(*parts).with_suffix(".py")
    return path


@lru_cache(maxsize=64)
def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(_read(path))
    except SyntaxError:
        return ast.Module(body=[], type_ignores=[])


_UNSET = object()


def _literal_value(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNSET


def _literal(name: str, node: ast.expr, into: dict[str, Any]) -> None:
    """Record a default written as a literal; None (computed later by the class) and expressions are skipped."""
    value = _literal_value(node)
    if value is not _UNSET and value is not None and not name.startswith("_"):
        into[name] = value
