"""Turn what the user typed (path, .gguf, repo id, repo@revision, alias) into a ModelSource."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from llmctl.core.errors import ModelNotFoundError, ModelReadError, UsageError
from llmctl.core.settings import Settings, load_settings
from llmctl.core.sources import (
    GGUFFileSource,
    HubSource,
    LocalDirSource,
    ModelScopeSource,
    ModelSource,
    is_broken_link,
)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_TRUE = {"1", "true", "yes", "on"}


def use_modelscope(source: str | None) -> bool:
    if source is not None:
        if source not in ("hf", "modelscope"):
            raise UsageError(f"unknown source {source!r}: use hf or modelscope")
        return source == "modelscope"
    return os.environ.get("LLMCTL_USE_MODELSCOPE", "").strip().lower() in _TRUE


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", "..") or name.endswith(".gguf")


def resolve_model(
    name: str,
    *,
    revision: str | None = None,
    source: str | None = None,
    settings: Settings | None = None,
) -> ModelSource:
    """Find the model `name` names: aliases first (an alias may name another), then paths, then repo ids."""
    name = (name or "").strip()
    if not name:
        raise UsageError("no model given")
    settings = settings or load_settings()
    target = settings.alias_target(name)
    if target is not None:
        return _resolve_target(target, label=name, revision=revision, source=source)
    return _resolve_target(name, label=name, revision=revision, source=source)


def _local_path(name: str) -> Path | None:
    """`name` as an existing local path, or None when nothing is there; links that lead nowhere are errors."""
    try:
        path = Path(name).expanduser()
    except RuntimeError:  # "~someone" with no such user
        return None
    try:
        path.stat()
    except ValueError:  # an embedded NUL byte: no file can have this name
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ModelReadError(
                f"{name}: symbolic link loop (the link leads back to itself)", hint="fix or remove the link"
            ) from None
        if os.path.islink(path):
            raise ModelNotFoundError(
                f"{name} is a symbolic link to {os.readlink(path)}, which does not exist"
            ) from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            return None
        raise ModelReadError(f"cannot read {name}: {err.strerror or err}") from None
    return path


def _resolve_target(name: str, *, label: str, revision: str | None, source: str | None) -> ModelSource:
    path = _local_path(name)
    if path is not None:
        if path.is_dir():
            src = LocalDirSource(label, path.resolve())
            if is_broken_link(path / "config.json"):
                raise ModelReadError(
                    f"{path / 'config.json'} is a symbolic link that leads nowhere (missing target or loop)"
                )
            if not (path / "config.json").exists() and src.gguf_path is None:
                raise ModelReadError(
                    f"{path} has no config.json (and no .gguf file): not a model folder",
                    hint="point at the folder that holds config.json, or at a .gguf file",
                )
            return src
        if path.suffix.lower() == ".gguf":
            return GGUFFileSource(label, path.resolve())
        raise ModelReadError(f"{path} is a file but not a .gguf model", hint="give the folder holding config.json")
    if _looks_like_path(name):
        raise ModelNotFoundError(f"no such file or directory: {name}")

    repo, _, rev = name.partition("@")
    if rev and revision and rev != revision:
        raise UsageError(f"two revisions given: {name!r} and --revision {revision}")
    revision = rev or revision
    if not _REPO_ID.match(repo) or ".." in repo or repo.endswith((".", "-")):
        raise ModelNotFoundError(
            f"{name!r} is not a local path, an alias or a valid repo id",
            hint="use a folder with config.json, a .gguf file, an owner/name repo id, or an alias from `llmctl config show`",
        )
    if "/" not in repo:
        raise ModelNotFoundError(
            f"{name!r} is not a local path or a known alias",
            hint="repo ids look like owner/name; `llmctl config show` lists the aliases",
        )
    if use_modelscope(source):
        return ModelScopeSource(label, repo, revision)
    return HubSource(label, repo, revision)
