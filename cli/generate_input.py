"""Reading `llmctl generate` prompts: --prompt, --file or stdin; plain lines or JSONL with prompt/messages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.cli.lines import LineSource, ListSource, max_line_bytes, open_input, parse_all
from llmctl.core.errors import UsageError
from llmctl.core.values import JSONInputError, loads_json, strings_problem


@dataclass
class PromptItem:
    """One input, in input order: a text prompt, a conversation, or why the line cannot be used."""

    index: int
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        if self.prompt is not None:
            return self.prompt
        if self.messages:
            return str(self.messages[-1].get("content", ""))
        return ""


def prompt_source(prompts: list[str] | None, file: Path | None) -> ListSource[PromptItem] | LineSource[PromptItem]:
    """The inputs as PromptItems, read as they come: every input becomes exactly one item, so N inputs give N
    results (errors included)."""
    if prompts:
        if file is not None:
            raise UsageError("give prompts with --prompt or --file, not both")
        return ListSource([_checked(PromptItem(i, prompt=p), f"prompt {i + 1}") for i, p in enumerate(prompts)])
    stream = open_input(file, nothing_given="no prompt: use --prompt TEXT, --file FILE, or pipe prompts on stdin (one per line)")
    return LineSource(stream, _item, max_line_bytes())


def parse_lines(raw: bytes) -> list[PromptItem]:
    items = parse_all(raw, _item)
    if not items:
        raise UsageError("no prompts in the input")
    return items


def _item(i: int, text: str | None, error: str | None) -> PromptItem:
    return PromptItem(i, error=error) if text is None else _parse_line(i, text)


def _parse_line(i: int, text: str) -> PromptItem:
    if not text.strip():
        return PromptItem(i, error=f"line {i + 1} is empty")
    if not text.lstrip().startswith("{"):
        return _checked(PromptItem(i, prompt=text), f"line {i + 1}")
    try:
        obj = loads_json(text)
    except JSONInputError as err:
        return PromptItem(i, error=f"line {i + 1} looks like JSON but does not parse: {err}")
    if not isinstance(obj, dict):
        return PromptItem(i, error=f"line {i + 1}: a JSON line must be an object with 'prompt' or 'messages'")
    if isinstance(obj.get("prompt"), str):
        return _checked(PromptItem(i, prompt=obj["prompt"]), f"line {i + 1}")
    messages = obj.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages):
        return _checked(PromptItem(i, messages=messages), f"line {i + 1}")
    return PromptItem(i, error=f"line {i + 1}: a JSON line needs a string 'prompt' or a list of 'messages' with roles")


def _checked(item: PromptItem, where: str) -> PromptItem:
    """`item`, or an error item when its text cannot be encoded ("\\ud800" in JSON, a stray byte in an argument)."""
    why = strings_problem(item.prompt if item.messages is None else item.messages)
    if why is None:
        return item
    return PromptItem(item.index, error=f"{where}: the prompt {why}")
