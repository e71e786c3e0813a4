"""GGUF tokenizers built by llmctl vs the ones transformers builds from the same metadata."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmctl.core.engine.gguf_loader import load_gguf_tokenizer
from llmctl.core.engine.gguf_tokenizer import build_gguf_tokenizer
from llmctl.core.errors import ModelReadError

TEXTS = [
    "Hello world!",
    "The year 2024 had 365 days; pi is 3.14159.",
    "<|im_start|>user\nWhat's up?<|im_end|>\n",
    "  leading spaces,\ttabs\n\n\nand newlines  ",
    "naïve café — 東京 😀 ünïcödé",
    "don't I'll we've THEY'RE",
    "",
]


def reference_backend(path: Path):
    """transformers' own GGUF tokenizer conversion (what AutoTokenizer.from_pretrained(gguf_file=) uses)."""
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    architecture, tokenizer_dict, tokenizer_config = get_gguf_tokenizer(str(path))
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    return backend, tokenizer_config


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_gguf: Path):
    return reference_backend(smollm2_gguf)


def test_smollm2_matches_transformers(smollm2_gguf: Path, smollm2_reference) -> None:
    ref, ref_config = smollm2_reference
    tok = load_gguf_tokenizer(smollm2_gguf)
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == ref.encode(text).ids, text
        assert tok.decode(ids) == text
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(tok, name) == ref_config[name], name
    assert tok.chat_template == ref_config["chat_template"]
    assert len(tok) == ref.get_vocab_size(with_added_tokens=True)


def test_smollm2_chat_template_and_specials(smollm2_gguf: Path) -> None:
    tok = load_gguf_tokenizer(smollm2_gguf)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    ids = tok(text)["input_ids"]
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(im_start) == 3  # the special token stays whole: system, user, assistant
    assert tok.decode(ids, skip_special_tokens=True).count("<|im_start|>") == 0
    # digits are split one by one in SmolLM2 (llama.cpp pre-tokenizer "smollm")
    assert len(tok("12345")["input_ids"]) == 5


def test_cached_per_file(smollm2_gguf: Path) -> None:
    assert load_gguf_tokenizer(smollm2_gguf) is load_gguf_tokenizer(str(smollm2_gguf))


def write_tokenizer_gguf(path: Path, model: str, tokens: list[str], **fields) -> None:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    for key, value in fields.items():
        getattr(writer, f"add_{key}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def byte_level_vocab() -> tuple[list[str], list[str], list[int]]:
    """A small byte-level BPE vocabulary: all 256 byte symbols, a few merges, two control tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "1 2", "' s", "Ċ Ċ", "e r", "Ġ w"]
    tokens = ["<|endoftext|>", "<|im_start|>"] + alphabet + [m.replace(" ", "") for m in merges]
    types = [3, 3] + [1] * (len(tokens) - 2)
    return tokens, merges, types


@pytest.mark.parametrize("pre", ["default", "smollm", "llama-bpe", "qwen2"])
def test_byte_level_pre_tokenizers_match_transformers(tmp_path: Path, pre: str) -> None:
    tokens, merges, types = byte_level_vocab()
    path = tmp_path / f"bpe-{pre}.gguf"
    write_tokenizer_gguf(path, "gpt2", tokens, token_merges=merges, token_types=types, tokenizer_pre=pre,
                         bos_token_id=0, eos_token_id=0)
    ref, _ = reference_backend(path)
    backend, kwargs = build_gguf_tokenizer(path)
    for text in TEXTS + ["the 1234567 wither's\n\n\n  the"]:
        ids = backend.encode(text).ids
        assert backend.decode(ids, skip_special_tokens=False) == text
        if pre == "smollm" and any(c.isdigit() for c in text):
            # llama.cpp splits every digit apart for "smollm" (as SmolLM2's own tokenizer.json does);
            # transformers' GGUF conversion does not, so here the merged "12" token must never appear
            assert tokens.index("12") not in ids and ids.count(tokens.index("1")) >= 1, text
            continue
        assert ids == ref.encode(text).ids, (pre, text)
    assert kwargs["eos_token"] == "<|endoftext|>"


def test_sentencepiece_matches_transformers(tmp_path: Path) -> None:
    pieces = ["\u2581", "a", "b", "c", "h", "i", "\u2581a", "ab", "\u2581ab", "bc", "\u2581abc", "hi", "\u2581hi"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(pieces))]
    path = tmp_path / "spm.gguf"
    write_tokenizer_gguf(path, "llama", tokens, token_types=types, token_scores=scores, unk_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    ref, ref_config = reference_backend(path)
    tok = load_gguf_tokenizer(path)
    for text in ["abc hi", "ab abc", "hi there ü", " a  b", "c"]:
        ours = tok(text)["input_ids"]
        assert ours[0] == 1  # llama.cpp adds BOS to sentencepiece vocabularies unless told otherwise
        assert ours[1:] == ref.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ours, skip_special_tokens=True) == ref.decode(ours[1:])  # a leading space is dropped
        assert tok.decode(ours, skip_special_tokens=True).strip() == text.strip()
    assert ref_config["add_bos_token"] is True
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")


def test_cache_follows_file_changes(tmp_path: Path) -> None:
    tokens, merges, types = byte_level_vocab()
    path = tmp_path / "t.gguf"
    write_tokenizer_gguf(path, "gpt2", tokens, token_merges=merges, token_types=types, eos_token_id=0)
    first = load_gguf_tokenizer(path)
    assert load_gguf_tokenizer(path) is first
    write_tokenizer_gguf(path, "gpt2", tokens, token_merges=merges[:2], token_types=types, eos_token_id=0)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_gguf_tokenizer(path) is not first


def test_file_without_tokenizer(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    path = tmp_path / "notok.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelReadError, match="no tokenizer"):
        load_gguf_tokenizer(path)
