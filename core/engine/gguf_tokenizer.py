"""Build a tokenizer from a GGUF file's metadata with the `tokenizers` library (no 10 s transformers detour)."""

from __future__ import annotations

import functools
import os
from typing import Any

from llmctl.core.errors import ModelReadError
from llmctl.core.gguf_meta import ArrayRef, read_gguf_header

# llama.cpp token types (llama_token_type)
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> how text is split before byte-level BPE (llama.cpp's llm_tokenizer_bpe regexes)
_BYTE_LEVEL_PRE = {
    "default": "gpt2", "gpt-2": "gpt2", "gpt2": "gpt2", "mpt": "gpt2", "olmo": "gpt2", "jais": "gpt2",
    # StarCoder-style vocabularies split every digit apart, then apply GPT-2's regex (SmolLM2 is one)
    "smollm": "digits", "starcoder": "digits", "refact": "digits", "command-r": "digits",
    "codeshell": "digits", "exaone": "digits",
    "llama3": "llama3", "llama-v3": "llama3", "llama-bpe": "llama3", "falcon3": "llama3",
    "smaug-bpe": "llama3", "dbrx": "llama3", "pixtral": "llama3",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2", "stablelm2": "qwen2", "megrez": "qwen2",
}
_TOKENIZER_KEYS = (
    "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet byte-level vocabularies are spelled in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _byte_level_pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers

    kind = _BYTE_LEVEL_PRE[pre]
    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "digits":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    split = _LLAMA3_SPLIT if kind == "llama3" else _QWEN2_SPLIT
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _byte_level(meta: dict) -> tuple[Any, dict[str, int]]:
    from tokenizers import Tokenizer, decoders, models, processors

    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    tokens = meta["tokenizer.ggml.tokens"]
    if not set("".join(tokens)) <= alphabet:  # rare: a token spelled outside the byte alphabet; re-spell it
        tokens = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")) for t in tokens]
    vocab = dict(zip(tokens, range(len(tokens))))
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or ()]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=False))
    tok.pre_tokenizer = _byte_level_pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok, vocab


def _spm_merges(tokens: list[str], scores: list[float], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Merges implied by a sentencepiece vocabulary: every split of a token into two tokens, best score first."""
    merges = []
    for piece, score in zip(tokens, scores):
        local = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges.extend((left, right, score) for left, right in local)
    # stable sort: equal scores keep the order above (transformers' generate_merges does the same)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _sentencepiece(meta: dict) -> tuple[Any, dict[str, int]]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = meta["tokenizer.ggml.tokens"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if meta.get("tokenizer.ggml.merges"):
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    else:
        merges = _spm_merges(tokens, meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens), vocab)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and unk_id < len(tokens) else None
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None)
    )
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    return tok, vocab


def _special_token_ids(meta: dict) -> dict[str, int | None]:
    return {
        "bos_token": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token": meta.get("tokenizer.ggml.eos_token_id"),
        "unk_token": meta.get("tokenizer.ggml.unknown_token_id"),
        "pad_token": meta.get("tokenizer.ggml.padding_token_id"),
    }


def _add_special_tokens(tok: Any, meta: dict, vocab: dict[str, int]) -> None:
    """Control tokens (<|im_start|>, </s>) become special added tokens, user-defined ones plain added tokens,
    so both are matched whole; only tokens already in the vocabulary, so ids never shift."""
    from tokenizers import AddedToken

    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [0] * len(tokens)
    special_ids = {i for i in _special_token_ids(meta).values() if i is not None}
    special, plain = [], []
    marked = {i for i, kind in enumerate(types) if kind in (_CONTROL, _UNKNOWN, _USER_DEFINED)} | special_ids
    for i in sorted(marked):
        text, kind = tokens[i], types[i]
        if vocab.get(text) != i:
            continue
        if kind in (_CONTROL, _UNKNOWN) or i in special_ids:
            special.append(AddedToken(text, special=True, normalized=False))
        elif kind == _USER_DEFINED:
            plain.append(AddedToken(text, special=False, normalized=False))
    tok.add_special_tokens(special)
    tok.add_tokens(plain)


def _bos_eos_processor(tok: Any, meta: dict, add_bos: bool, add_eos: bool) -> None:
    from tokenizers import processors

    tokens, ids = meta["tokenizer.ggml.tokens"], _special_token_ids(meta)
    bos, eos = ids["bos_token"], ids["eos_token"]
    add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
    if not (add_bos or add_eos):
        return
    first = [tokens[bos]] if add_bos else []
    last = [tokens[eos]] if add_eos else []
    pieces = {tokens[i]: i for i in (bos if add_bos else None, eos if add_eos else None) if i is not None}
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(first + ["$A:0"] + last),
        pair=" ".join(first + ["$A:0"] + last + first + ["$B:1"] + last),
        special_tokens=list(pieces.items()),
    )


def _read_tokenizer_meta(path: str) -> dict:
    meta, _, _ = read_gguf_header(path, keep_arrays=_TOKENIZER_KEYS)
    if "tokenizer.ggml.tokens" not in meta:
        raise ModelReadError(f"{path}: the GGUF file carries no tokenizer (no tokenizer.ggml.tokens)")
    for key in _TOKENIZER_KEYS:
        if isinstance(meta.get(key), ArrayRef):
            raise ModelReadError(f"{path}: GGUF tokenizer array {key} could not be read")
    return meta


def _native_supported(meta: dict) -> bool:
    model = meta.get("tokenizer.ggml.model")
    if model == "gpt2":
        return meta.get("tokenizer.ggml.pre", "default") in _BYTE_LEVEL_PRE
    # sentencepiece-BPE vocabularies of llama-family models; gemma/phi3 need transformers' fix-ups
    return model == "llama" and meta.get("general.architecture") in ("llama", "mistral")


def build_gguf_tokenizer(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """(tokenizers.Tokenizer, init kwargs for an HF tokenizer) from the metadata; imports no transformers.

    Raises ModelReadError for tokenizer types this builder does not cover (load_gguf_tokenizer falls back)."""
    path = os.fspath(path)
    meta = _read_tokenizer_meta(path)
    if not _native_supported(meta):
        raise ModelReadError(
            f"{path}: no native GGUF tokenizer for model={meta.get('tokenizer.ggml.model')!r} "
            f"pre={meta.get('tokenizer.ggml.pre')!r}"
        )
    is_spm = meta["tokenizer.ggml.model"] == "llama"
    tok, vocab = _sentencepiece(meta) if is_spm else _byte_level(meta)
    _add_special_tokens(tok, meta, vocab)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", is_spm))  # llama.cpp adds BOS to SPM by default
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    _bos_eos_processor(tok, meta, add_bos, add_eos)
    tokens = meta["tokenizer.ggml.tokens"]
    kwargs: dict[str, Any] = {
        name: tokens[i] for name, i in _special_token_ids(meta).items() if i is not None and i < len(tokens)
    }
    kwargs["chat_template"] = meta.get("tokenizer.chat_template")
    kwargs["clean_up_tokenization_spaces"] = False
    kwargs["model_max_length"] = int(meta.get(f"{meta.get('general.architecture')}.context_length", 1 << 30))
    return tok, kwargs


def _file_key(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _load_cached(key: tuple[str, int, int]) -> Any:
    from transformers import PreTrainedTokenizerFast

    path = key[0]
    try:
        backend, kwargs = build_gguf_tokenizer(path)
    except ModelReadError:
        if "tokenizer.ggml.tokens" not in read_gguf_header(path)[0]:
            raise
        # tokenizer kinds we do not build ourselves: transformers' own GGUF conversion (slow, but right)
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
        except (ValueError, KeyError, OSError, ImportError) as exc:
            raise ModelReadError(f"{path}: cannot build a tokenizer from the GGUF metadata ({exc})") from exc
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def load_gguf_tokenizer(path: str | os.PathLike) -> Any:
    """An HF fast tokenizer (with chat template) for a GGUF file; cached per file (path, size, mtime)."""
    path = os.fspath(path)
    try:
        key = _file_key(path)
    except OSError as exc:
        raise ModelReadError(f"{path}: cannot read GGUF file ({exc.strerror or exc})") from exc
    return _load_cached(key)
