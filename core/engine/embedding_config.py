"""EmbeddingConfig: pooling, normalisation, max length and prompts from a checkpoint's sentence-transformers files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.core.errors import ModelReadError, UnsupportedModelError, UsageError

POOLING_TYPES = ("cls", "mean", "max", "lasttoken")

# 1_Pooling/config.json flag -> our pooling name (sentence-transformers' Pooling modes).
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
}
_POOLING_NAMES = {"cls": "cls", "mean": "mean", "max": "max", "lasttoken": "lasttoken"}
# Modules of a sentence-transformers pipeline that the embedder reproduces; anything else (Dense, ...) is refused.
_KNOWN_MODULES = {"Transformer", "Pooling", "Normalize"}


@dataclass(frozen=True, slots=True)
class EmbeddingConfig:
    """How a checkpoint turns hidden states into one vector per text."""

    pooling: str
    normalize: bool
    max_seq_length: int
    dimension: int
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_TYPES:
            raise UsageError(f"unknown pooling {self.pooling!r}", hint=f"use one of {', '.join(POOLING_TYPES)}")
        if self.max_seq_length < 1:
            raise UsageError(f"max_seq_length must be positive, got {self.max_seq_length}")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ModelReadError(f"default_prompt_name {self.default_prompt_name!r} is not one of the prompts")


def _read_json(path: Path) -> dict | list | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelReadError(f"cannot read {path}: {exc}") from exc


def _module_type(entry: dict) -> str:
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def _pooling_from_config(data: dict, path: Path) -> str:
    mode = data.get("pooling_mode")
    if isinstance(mode, str):  # newer sentence-transformers write the mode by name
        if mode not in _POOLING_NAMES:
            raise UnsupportedModelError(f"{path}: pooling mode {mode!r} is not supported")
        return _POOLING_NAMES[mode]
    modes = [name for flag, name in _POOLING_FLAGS.items() if data.get(flag)]
    others = [k for k, v in data.items() if k.startswith("pooling_mode_") and v and k not in _POOLING_FLAGS]
    if others or len(modes) != 1:
        raise UnsupportedModelError(
            f"{path}: pooling {', '.join(modes + others) or 'none'} is not supported",
            hint="llmctl pools with exactly one of cls, mean, max, lasttoken",
        )
    return modes[0]


def read_embedding_config(
    model_dir: str | Path, *, hidden_size: int, max_positions: int, is_causal: bool, tokenizer_max_length=None
) -> EmbeddingConfig:
    """The checkpoint's EmbeddingConfig from modules.json, the Pooling config, sentence_bert_config.json and
    config_sentence_transformers.json. Without those files: decoders pool the last token, encoders the CLS
    token (vLLM's defaults), both normalised; max_seq_length is min(position table, tokenizer max length).
    """
    model_dir = Path(model_dir)
    pooling = "lasttoken" if is_causal else "cls"
    normalize = True
    dimension = hidden_size
    modules = _read_json(model_dir / "modules.json")
    if isinstance(modules, list):
        types = [_module_type(m) for m in modules if isinstance(m, dict)]
        unknown = [t for t in types if t not in _KNOWN_MODULES]
        if unknown:
            raise UnsupportedModelError(
                f"{model_dir}: sentence-transformers module(s) {', '.join(unknown)} are not supported",
                hint="llmctl reproduces Transformer -> Pooling -> Normalize pipelines",
            )
        normalize = "Normalize" in types
        for entry in modules:
            if _module_type(entry) == "Pooling":
                pool_path = model_dir / str(entry.get("path", "")) / "config.json"
                data = _read_json(pool_path)
                if isinstance(data, dict):
                    pooling = _pooling_from_config(data, pool_path)
                    if data.get("include_prompt") is False:
                        raise UnsupportedModelError(f"{pool_path}: include_prompt=false pooling is not supported")
                    dimension = int(data.get("word_embedding_dimension") or hidden_size)
    max_len = max_positions
    if tokenizer_max_length is not None and 0 < tokenizer_max_length < max_len:
        max_len = int(tokenizer_max_length)
    st_config = _read_json(model_dir / "sentence_bert_config.json")
    if isinstance(st_config, dict) and st_config.get("max_seq_length"):
        max_len = min(int(st_config["max_seq_length"]), max_positions)
    prompts, default_prompt = {}, None
    st_meta = _read_json(model_dir / "config_sentence_transformers.json")
    if isinstance(st_meta, dict):
        prompts = {str(k): str(v) for k, v in (st_meta.get("prompts") or {}).items()}
        default_prompt = st_meta.get("default_prompt_name") or None
    return EmbeddingConfig(pooling, normalize, max_len, dimension, prompts, default_prompt)
