"""Tokenizer loading (HF folders through AutoTokenizer, GGUF files from their metadata) and chat templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmctl.core.errors import ModelReadError, UnsupportedModelError, UsageError

Conversation = list[dict[str, Any]]


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".gguf" and Path(path).is_file()


def load_tokenizer(
    path: str | Path,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """An HF tokenizer for a model folder, a tokenizer folder or repo id, or a .gguf file."""
    if is_gguf(path):
        from llmctl.core.engine.gguf_loader import load_gguf_tokenizer

        return load_gguf_tokenizer(path)
    if not trust_remote_code:
        _refuse_remote_tokenizer(Path(path))
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if not trust_remote_code and "trust_remote_code" in str(exc):
            # A repo-code tokenizer the pre-check did not see (no auto_map in tokenizer_config.json).
            raise _needs_remote_code(path, None) from None
        raise ModelReadError(
            f"cannot load a tokenizer from {path}: {exc}",
            hint="pass tokenizer=... or skip_tokenizer_init=True with token prompts",
        ) from exc


def _refuse_remote_tokenizer(folder: Path) -> None:
    """A folder whose tokenizer class is the repo's own code (tokenizer_config.json auto_map: InternLM, Baichuan,
    ChatGLM) cannot load without trust_remote_code: say so in one line, before transformers asks or fails."""
    import json

    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return  # no such file (or not a folder): transformers reports what it lacks
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not (isinstance(auto_map, dict) and auto_map.get("AutoTokenizer")):
        return
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    name = config.get("tokenizer_class")
    if not (isinstance(name, str) and tokenizer_class_from_name(name) is not None):  # else transformers has it
        raise _needs_remote_code(folder, name)


def _needs_remote_code(path, name: str | None) -> UnsupportedModelError:
    """The one error for a tokenizer that only the repo's code can load (the model itself may run natively)."""
    return UnsupportedModelError(
        f"the tokenizer of {path}{f' ({name})' if name else ''} is defined by code in the model's repo",
        hint="pass --trust-remote-code (trust_remote_code=True) if you trust it; from Python, "
        "skip_tokenizer_init=True runs token-id prompts without it",
    )


def eos_token_ids(tokenizer, *configs) -> set[int]:
    """EOS ids from the tokenizer and from config / generation_config objects or dicts (int or list)."""
    ids: set[int] = set()
    sources = [getattr(tokenizer, "eos_token_id", None)] if tokenizer is not None else []
    for cfg in configs:
        if cfg is None:
            continue
        sources.append(cfg.get("eos_token_id") if isinstance(cfg, dict) else getattr(cfg, "eos_token_id", None))
    for value in sources:
        if value is None:
            continue
        ids.update([value] if isinstance(value, int) else value)
    return {int(i) for i in ids}


def is_conversation(messages: Any) -> bool:
    """True for one conversation (a list of {"role", "content"} dicts), False for a list of them."""
    return isinstance(messages, (list, tuple)) and (not messages or isinstance(messages[0], dict))


def apply_chat_template(
    tokenizer,
    conversation: Conversation,
    *,
    add_generation_prompt: bool = True,
    chat_template: str | None = None,
    continue_final_message: bool = False,
    tools: list[dict] | None = None,
) -> tuple[str, list[int]]:
    """Render one conversation with the tokenizer's chat template: (prompt text, prompt token ids).

    The template writes the special tokens it wants (BOS included), so the text is tokenized without
    adding special tokens again.
    """
    if tokenizer is None:
        raise UsageError("chat needs a tokenizer: this LLM was built with skip_tokenizer_init=True")
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise UsageError(
            "the tokenizer has no chat template",
            hint="pass chat_template=..., or use generate() with a plain prompt",
        )
    for msg in conversation:
        if not isinstance(msg, dict) or "role" not in msg:
            raise UsageError(f"a chat message must be a dict with 'role' and 'content', got {msg!r}")
    text = tokenizer.apply_chat_template(
        list(conversation),
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt and not continue_final_message,
        continue_final_message=continue_final_message,
        tools=tools,
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text, ids
