"""Where a model's files come from: a local folder, a .gguf file, the Hugging Face hub, or ModelScope.

Each source reads the small files the metadata path needs (JSON configs, safetensors headers) without
downloading weights; `materialize()` fetches everything for the compute path.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from abc import ABC, abstractmethod
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llmctl.core.errors import ModelNotFoundError, ModelReadError
from llmctl.core.safetensors_header import SafetensorsHeader, read_safetensors_header
from llmctl.core.values import JSONInputError, loads_json


# What the compute path needs from a hub repo: configs, tokenizer files and weights (safetensors preferred).
_CONFIG_PATTERNS = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*/*.json"]


def parse_json_bytes(raw: bytes, where: str) -> dict[str, Any]:
    """A model file's JSON object. NaN and Infinity are read as Python's json writes them: transformers saves
    Mamba-2's time_step_limit as [0.0, Infinity]; the config check refuses a non-finite size."""
    try:
        data = loads_json(raw, allow_constants=True)
    except JSONInputError as err:
        raise ModelReadError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ModelReadError(f"{where} must hold a JSON object, not {type(data).__name__}")
    return data


def is_broken_link(path: Path) -> bool:
    """A symbolic link whose target is missing, or that loops back to itself."""
    return os.path.islink(path) and not path.exists()


class ModelSource(ABC):
    """The files of one model, wherever they live."""

    origin = "local"

    def __init__(self, name: str, display: str, revision: str | None = None):
        self.name = name
        self.display = display
        self.revision = revision

    gguf_path: Path | None = None

    @cached_property
    def gguf_info(self):
        if self.gguf_path is None:
            return None
        from llmctl.core.gguf_meta import read_gguf

        return read_gguf(self.gguf_path)

    def read_json(self, filename: str) -> dict[str, Any] | None:
        raw = self._read_bytes(filename)
        return None if raw is None else parse_json_bytes(raw, f"{self.display}: {filename}")

    @abstractmethod
    def _read_bytes(self, filename: str) -> bytes | None:
        """The file's bytes, or None when the model has no such file."""

    @abstractmethod
    def list_files(self) -> list[str]:
        """Every file of the model, as paths relative to its root."""

    def safetensors_header(self) -> SafetensorsHeader | None:
        return None

    @abstractmethod
    def materialize(self) -> Path:
        """A local path holding the whole model (a folder, or a .gguf file)."""


class LocalDirSource(ModelSource):
    origin = "local"

    def __init__(self, name: str, path: Path):
        super().__init__(name, str(path))
        self.path = path
        if not (path / "config.json").exists():
            ggufs = sorted(path.glob("*.gguf"))
            if ggufs:
                self.gguf_path = ggufs[0]

    def _read_bytes(self, filename: str) -> bytes | None:
        if self.gguf_path is not None and filename == "config.json":
            return json.dumps(self.gguf_info.hf_config).encode()
        target = self.path / filename
        if not target.is_file():
            if is_broken_link(target):  # not "absent": say what is wrong with it
                raise ModelReadError(f"cannot read {target}: the symbolic link leads nowhere (missing target or loop)")
            return None
        try:
            return target.read_bytes()
        except OSError as err:
            raise ModelReadError(f"cannot read {target}: {err}") from None

    def list_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file())

    def safetensors_header(self) -> SafetensorsHeader | None:
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            return None
        header: SafetensorsHeader = {}
        for file in files:
            header.update(read_safetensors_header(file))
        return header

    def materialize(self) -> Path:
        return self.gguf_path if self.gguf_path is not None and not (self.path / "config.json").exists() else self.path


class GGUFFileSource(ModelSource):
    origin = "gguf"

    def __init__(self, name: str, path: Path):
        super().__init__(name, str(path))
        self.gguf_path = path

    def _read_bytes(self, filename: str) -> bytes | None:
        if filename == "config.json":
            return json.dumps(self.gguf_info.hf_config).encode()
        return None

    def list_files(self) -> list[str]:
        return [self.gguf_path.name]

    def materialize(self) -> Path:
        return self.gguf_path


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """False when HF_HUB_OFFLINE is set or the hub's host does not resolve: then only the cache is read.

    Without this, huggingface_hub retries an unreachable host for ~25 s with warnings before it gives up.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    return True


class HubSource(ModelSource):
    """A Hugging Face repo, through huggingface_hub's cache (HF_HOME, HF_HUB_OFFLINE, token, revision)."""

    origin = "hf"

    def _read_bytes(self, filename: str) -> bytes | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            path = hf_hub_download(
                self.display, filename, revision=self.revision, local_files_only=not hub_reachable()
            )
        except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: catch it first
            if filename == "config.json":
                raise self._not_cached(filename) from None
            return None
        except EntryNotFoundError:
            return None
        except Exception as err:  # repository missing, gated, revision unknown, network down
            raise self._translate(err) from None
        return Path(path).read_bytes()

    def list_files(self) -> list[str]:
        from huggingface_hub import list_repo_files

        if not hub_reachable():
            return self._cached_files()
        try:
            return sorted(list_repo_files(self.display, revision=self.revision))
        except Exception as err:
            raise self._translate(err) from None

    def safetensors_header(self) -> SafetensorsHeader | None:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import NotASafetensorsRepoError

        if not hub_reachable():
            return self._cached_safetensors_header()
        try:
            meta = HfApi().get_safetensors_metadata(self.display, revision=self.revision)
        except NotASafetensorsRepoError:
            return None
        except Exception:  # offline: the count falls back to the config
            return None
        header: SafetensorsHeader = {}
        for file_meta in meta.files_metadata.values():
            for name, info in file_meta.tensors.items():
                header[name] = (info.dtype, tuple(info.shape))
        return header

    def materialize(self) -> Path:
        from huggingface_hub import snapshot_download

        files = self.list_files()
        patterns = list(_CONFIG_PATTERNS)
        if any(f.endswith(".safetensors") for f in files):
            patterns.append("*.safetensors")
        elif any(f.endswith(".bin") for f in files):
            patterns.append("*.bin")
        elif any(f.endswith(".gguf") for f in files):
            patterns.append(sorted(f for f in files if f.endswith(".gguf"))[0])
        try:
            return Path(snapshot_download(
                self.display, revision=self.revision, allow_patterns=patterns, local_files_only=not hub_reachable()
            ))
        except Exception as err:
            raise self._translate(err) from None

    def _cached_snapshot(self) -> Path | None:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(self.display, revision=self.revision, local_files_only=True))
        except Exception:
            return None

    def _cached_files(self) -> list[str]:
        snapshot = self._cached_snapshot()
        if snapshot is None:
            raise self._not_cached()
        return sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())

    def _cached_safetensors_header(self) -> SafetensorsHeader | None:
        snapshot = self._cached_snapshot()
        files = sorted(snapshot.glob("*.safetensors")) if snapshot is not None else []
        header: SafetensorsHeader = {}
        for file in files:
            header.update(read_safetensors_header(file))
        return header or None

    def _not_cached(self, filename: str = "config.json") -> ModelNotFoundError | ModelReadError:
        """Offline and the file is not in the cache: say whether the repo is cached at another revision,
        or whether the cached file is a link that leads nowhere (a missing blob, a loop)."""
        broken = self._broken_cache_link(filename)
        if broken is not None:
            return ModelReadError(f"the cached {filename} of {self.display!r} is a symbolic link that leads nowhere "
                                  f"({broken})", hint="delete the repo from the cache and download it again")
        if self.revision:
            cached = self._cached_revisions()
            if cached:
                return ModelNotFoundError(
                    f"model {self.display!r} is in the local cache, but not at revision {self.revision!r} "
                    f"(cached: {', '.join(cached[:5])}{', ...' if len(cached) > 5 else ''})",
                    hint="use a cached revision, or download this one while online "
                         f"(huggingface-cli download {self.display} --revision {self.revision})",
                )
        return self._not_found("is not in the local cache and the hub cannot be reached")

    def _repo_cache(self) -> Path:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE) / ("models--" + self.display.replace("/", "--"))

    def _broken_cache_link(self, filename: str) -> Path | None:
        """The cached snapshot's `filename` when it is a link to nowhere, else None."""
        repo = self._repo_cache()
        revision = self.revision or "main"
        try:
            ref = repo / "refs" / revision
            commit = ref.read_text().strip() if ref.is_file() else revision
            target = repo / "snapshots" / commit / filename
            return target if is_broken_link(target) else None
        except (OSError, ValueError):
            return None

    def _cached_revisions(self) -> list[str]:
        """Branch / tag names and snapshot commits the local cache holds for this repo (huggingface_hub's layout)."""
        repo = self._repo_cache()
        names = []
        try:
            refs = repo / "refs"
            if refs.is_dir():
                names += sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file())
            snapshots = repo / "snapshots"
            if snapshots.is_dir():
                names += sorted(p.name[:12] for p in snapshots.iterdir() if p.is_dir())
        except OSError:
            return []
        return names

    def _not_found(self, why: str) -> ModelNotFoundError:
        return ModelNotFoundError(
            f"model {self.display!r} {why}",
            hint="check the name, unset HF_HUB_OFFLINE or download it once while online (huggingface-cli download)",
        )

    def _translate(self, err: Exception) -> ModelNotFoundError:
        kind = type(err).__name__
        if kind == "RepositoryNotFoundError":
            return self._not_found("was not found on the Hugging Face hub (or is private: log in with `hf auth login`)")
        if kind == "GatedRepoError":
            return self._not_found("is gated: accept its licence on the hub and log in with `hf auth login`")
        if kind == "RevisionNotFoundError":
            return self._not_found(f"has no revision {self.revision!r}")
        if kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            return self._not_cached()
        return self._not_found(f"could not be fetched from the hub ({kind}: {str(err).splitlines()[0] if str(err) else ''})")


class ModelScopeSource(ModelSource):
    """A ModelScope repo, through the modelscope package (LLMCTL_USE_MODELSCOPE=true or --source modelscope)."""

    origin = "modelscope"

    def _read_bytes(self, filename: str) -> bytes | None:
        try:
            from modelscope.hub.file_download import model_file_download
        except ImportError:
            raise ModelNotFoundError("ModelScope support needs the modelscope package: pip install modelscope") from None
        try:
            path = model_file_download(self.display, filename, revision=self.revision)
        except Exception as err:
            if "404" in str(err) or "not exist" in str(err).lower() or "not found" in str(err).lower():
                if filename != "config.json":
                    return None
            raise ModelNotFoundError(
                f"model {self.display!r} could not be fetched from ModelScope ({type(err).__name__})",
                hint="check the id, or drop --source modelscope / LLMCTL_USE_MODELSCOPE to use the Hugging Face hub",
            ) from None
        return Path(path).read_bytes()

    def list_files(self) -> list[str]:
        return []

    def materialize(self) -> Path:
        from modelscope import snapshot_download

        try:
            return Path(snapshot_download(self.display, revision=self.revision))
        except Exception as err:
            raise ModelNotFoundError(
                f"model {self.display!r} could not be downloaded from ModelScope ({type(err).__name__})"
            ) from None
