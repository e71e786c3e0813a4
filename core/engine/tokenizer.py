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
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        remote = None if trust_remote_code else _remote_tokenizer_class(path)
        if remote is not None:  # Baichuan's BaichuanTokenizer: its model runs natively, its tokenizer is repo code
            raise UnsupportedModelError(
                f"the tokenizer of {path} is code in the model's repo ({remote}), run only with --trust-remote-code",
                hint="pass --trust-remote-code (trust_remote_code=True) if you trust it, or skip_tokenizer_init=True "
                "with token-id prompts",
            ) from exc
        raise ModelReadError(
            f"cannot load a tokenizer from {path}: {exc}",
            hint="pass tokenizer=... or skip_tokenizer_init=True with token prompts",
        ) from exc


def _remote_tokenizer_class(path: str | Path) -> str | None:
    """The repo-code tokenizer class a local folder's tokenizer_config.json maps AutoTokenizer to, if any."""
    import json

    try:
        auto_map = json.loads((Path(path) / "tokenizer_config.json").read_text()).get("auto_map") or {}
    except (OSError, ValueError, AttributeError):
        return None
    entry = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else None
    names = [entry] if isinstance(entry, str) else [n for n in entry or [] if isinstance(n, str)]
    return names[0] if names else None


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
