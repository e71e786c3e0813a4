"""Checks on values that come from users and files: finite numbers, text that encodes, bounded JSON."""

from __future__ import annotations

import json
import math
import operator
import re
from typing import Any

from llmctl.core.errors import InvalidValueError

# Deeper JSON than this is refused: real configs and prompt records nest a handful of levels, and
# json (and everything that walks the result) recurses once per level.
MAX_JSON_DEPTH = 64


class JSONInputError(ValueError):
    """Text that is not JSON llmctl accepts: malformed, nested too deep, or with NaN/Infinity."""


def _no_constants(name: str) -> Any:
    raise JSONInputError(f"{name} is not a JSON number")


def loads_json(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH, allow_constants: bool = False) -> Any:
    """json.loads that never recurses out of the stack, refuses deep nesting and (unless allow_constants)
    NaN/Infinity.

    Raises JSONInputError with a one-line reason (bytes that are not UTF-8 included).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise JSONInputError(f"not valid UTF-8 (byte {err.start})") from None
    try:
        value = json.loads(text, parse_constant=None if allow_constants else _no_constants)
    except RecursionError:  # json's C scanner stops at the interpreter's recursion limit
        raise JSONInputError(f"nested too deep (at most {max_depth} levels)") from None
    except json.JSONDecodeError as err:
        raise JSONInputError(f"{err.msg} (line {err.lineno}, column {err.colno})") from None
    if json_depth(value) > max_depth:
        raise JSONInputError(f"nested more than {max_depth} levels deep")
    return value


def json_depth(value: Any) -> int:
    """How deeply lists and dicts nest in a parsed JSON value (0 for a scalar), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def is_finite_number(value: Any) -> bool:
    """An int or float (not bool) that is neither NaN nor infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def as_int(value: Any) -> int | None:
    """`value` as an int when it is one (ints, numpy / torch integer scalars, integral floats excluded), else None."""
    if isinstance(value, (bool, float, str, bytes)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def token_id_list(ids: Any) -> list[int] | None:
    """`ids` as a list of ints (numpy / torch integer scalars too), or None when it is not a sequence of
    integers: 1.7 is not token 1 and True is not token 1."""
    if isinstance(ids, (str, bytes, dict)) or not hasattr(ids, "__iter__"):
        return None
    out = [as_int(t) for t in ids]
    return None if None in out else out


def text_problem(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8 (a lone surrogate, e.g. from "\\ud800" or a bad argv byte), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"holds {text[err.start]!r} at character {err.start}, which is not valid Unicode text"
    return None


def strings_problem(value: Any) -> str | None:
    """text_problem() of the first bad string anywhere inside a JSON-like value (walked without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            why = text_problem(item)
            if why is not None:
                return why
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


# torch.Generator.manual_seed takes any integer from -2**63 to 2**64 - 1 (it raises RuntimeError outside).
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1


def seed_problem(seed: Any) -> str | None:
    """Why `seed` cannot seed a generator ("must be ..."), or None for a usable seed or None."""
    if seed is None:
        return None
    number = as_int(seed)
    if number is None:
        return f"must be an integer or None, got {seed!r}"
    if not SEED_MIN <= number <= SEED_MAX:
        return f"must be between -2**63 and 2**64 - 1, got {number}"
    return None


_DEVICE = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


def parse_device(device: str) -> tuple[str, int | None]:
    """("auto" | "cpu" | "cuda", index or None) for a device name llmctl runs on; InvalidValueError otherwise."""
    match = _DEVICE.fullmatch(device.strip().lower()) if isinstance(device, str) else None
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise InvalidValueError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N (N = 0, 1, ...)")
    return match.group(1), None if match.group(2) is None else int(match.group(2))
