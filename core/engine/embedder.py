"""The embedding engine: tokenize and truncate like sentence-transformers, run length-sorted packed batches, pool."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmctl.core.engine.embedding_config import POOLING_TYPES, EmbeddingConfig
from llmctl.core.engine.pooling import finish, pool
from llmctl.core.errors import InvalidValueError, UsageError
from llmctl.core.values import text_problem, token_id_list
from llmctl.model_defs.layers.context import AttentionMetadata, ForwardContext

DEFAULT_BATCH_SIZE = 64


@dataclass
class EmbeddingOutput:
    """One text's vector (vLLM's EmbeddingOutput)."""

    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class EmbeddingRequestOutput:
    """The result of embedding one text (vLLM's EmbeddingRequestOutput, plus `truncated`)."""

    request_id: str
    outputs: EmbeddingOutput
    prompt: str | None  # None for token-id inputs
    prompt_token_ids: list[int]
    truncated: bool = False
    finished: bool = True


class Embedder:
    """Turns texts into vectors with one embedding model (an encoder, or a decoder pooled at its last token)."""

    def __init__(self, model: nn.Module, tokenizer, config: EmbeddingConfig, device: torch.device,
                 vocab_size: int | None = None):
        self.model = model
        self.vocab_size = vocab_size  # token-id inputs are checked against it
        self.tokenizer = tokenizer
        self.config = config
        self.device = torch.device(device)
        self.causal = model.is_causal
        self._next_id = 0

    # -- tokenization -------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> list[tuple[list[int], bool]]:
        """(token ids, truncated) per text, cut to max_length tokens with the special tokens kept, as
        sentence-transformers' tokenizer(truncation=True, max_length=max_seq_length) does."""
        max_length = max_length or self.config.max_seq_length
        # One token of headroom tells which texts were cut without tokenizing any text in full.
        probe = self.tokenizer(list(texts), truncation=True, max_length=max_length + 1)["input_ids"]
        long = [i for i, ids in enumerate(probe) if len(ids) > max_length]
        results = [(list(ids), False) for ids in probe]
        if long:
            cut = self.tokenizer([texts[i] for i in long], truncation=True, max_length=max_length)["input_ids"]
            for i, ids in zip(long, cut):
                results[i] = (list(ids), True)
        return results

    def _tokens(self, items: Sequence[str | list[int]]) -> list[tuple[list[int], bool]]:
        """(token ids, truncated) per input: texts through the tokenizer, token-id inputs cut to max_seq_length."""
        texts = [(i, t) for i, t in enumerate(items) if isinstance(t, str)]
        if texts and self.tokenizer is None:
            raise UsageError("this embedding LLM has no tokenizer (skip_tokenizer_init=True): pass token-id "
                             'prompts {"prompt_token_ids": [...]}')  # fmt: skip
        limit = self.config.max_seq_length
        results = [(ids[:limit], len(ids) > limit) if not isinstance(ids, str) else None for ids in items]
        if texts:
            for (i, _), tokens in zip(texts, self.tokenize([t for _, t in texts])):
                results[i] = tokens
        return results

    # -- running ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward_batch(self, batch: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id lists of B sequences -> (hidden (T, H), seq_lens (B,)) from one packed, padding-free pass."""
        lens = [len(ids) for ids in batch]
        seq_lens = torch.tensor(lens, dtype=torch.int32, device=self.device)
        query_start_loc = torch.zeros(len(lens) + 1, dtype=torch.int32, device=self.device)
        torch.cumsum(seq_lens, 0, out=query_start_loc[1:])
        input_ids = torch.tensor([t for ids in batch for t in ids], dtype=torch.long, device=self.device)  # (T,)
        positions = torch.cat([torch.arange(n, device=self.device) for n in lens])  # (T,), restarting per sequence
        meta = AttentionMetadata(
            query_start_loc=query_start_loc,
            seq_lens=seq_lens,
            slot_mapping=torch.empty(0, dtype=torch.long, device=self.device),
            block_tables=torch.empty(len(lens), 0, dtype=torch.int32, device=self.device),
            max_query_len=max(lens),
            max_seq_len=max(lens),
            causal=self.causal,
        )
        hidden = self.model(input_ids, positions, ForwardContext(meta, None))
        return hidden, seq_lens

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """One EmbeddingRequestOutput per input, in input order.

        An input is a text or a token-id prompt {"prompt_token_ids": [...]} (used as given: no prompt
        prefix, no special tokens added, cut to max_seq_length). pooling / normalize None take the
        checkpoint's settings; prompt None takes the checkpoint's default prompt
        (config_sentence_transformers.json default_prompt_name), if any; dimensions keeps the first N
        components (Matryoshka), renormalised when normalize is on.
        """
        items = _input_list(texts, self.vocab_size)
        cfg = self.config
        pooling = cfg.pooling if pooling is None else pooling
        if pooling not in POOLING_TYPES:
            raise UsageError(f"unknown pooling {pooling!r}", hint=f"use one of {', '.join(POOLING_TYPES)}")
        normalize = cfg.normalize if normalize is None else bool(normalize)
        if dimensions is not None and (isinstance(dimensions, bool) or not 1 <= int(dimensions) <= cfg.dimension):
            raise UsageError(f"dimensions must be between 1 and the model's {cfg.dimension}, got {dimensions!r}")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        if prompt is None and cfg.default_prompt_name is not None:
            prompt = cfg.prompts[cfg.default_prompt_name]
        if isinstance(prompt, str) and text_problem(prompt) is not None:
            raise InvalidValueError(f"the embedding prompt {text_problem(prompt)}")
        prompts = [f"{prompt}{text}" if prompt and isinstance(text, str) else text for text in items]
        tokens = self._tokens(prompts)
        for i, (ids, _) in enumerate(tokens):
            if not ids:
                raise UsageError(f"input {i} ({items[i]!r}) has no tokens after tokenization: nothing to embed")

        vectors: list[list[float] | None] = [None] * len(items)
        for order in _length_sorted_batches([len(ids) for ids, _ in tokens], batch_size):
            hidden, seq_lens = self.forward_batch([tokens[i][0] for i in order])
            pooled = finish(pool(hidden, seq_lens, pooling), normalize=normalize, dimensions=dimensions)
            for i, row in zip(order, pooled.cpu().tolist()):
                vectors[i] = row

        outputs = []
        for text, (ids, truncated), vec in zip(prompts, tokens, vectors):
            text = text if isinstance(text, str) else None
            outputs.append(EmbeddingRequestOutput(str(self._next_id), EmbeddingOutput(vec), text, ids, truncated))
            self._next_id += 1
        return outputs


def _input_list(texts, vocab_size: int | None = None) -> list[str | list[int]]:
    """Texts stay strings; token-id prompts ({"prompt_token_ids": [...]}) become lists of ints (within the
    vocabulary). A text that is not valid Unicode (a lone surrogate) is refused: the tokenizer cannot take it."""
    if isinstance(texts, (str, dict)):
        texts = [texts]
    if not isinstance(texts, Iterable):
        raise UsageError(f"embed takes a string or a list of strings, got {type(texts).__name__}")
    items: list[str | list[int]] = []
    for i, item in enumerate(texts):
        if isinstance(item, dict) and "prompt_token_ids" in item:
            ids = item["prompt_token_ids"]
            numbers = token_id_list(ids)
            if numbers is None:
                raise InvalidValueError(f"input {i}: prompt_token_ids must be a list of integers")
            if numbers and (min(numbers) < 0 or (vocab_size is not None and max(numbers) >= vocab_size)):
                raise InvalidValueError(
                    f"input {i}: prompt_token_ids hold ids outside the vocabulary (size {vocab_size})"
                )
            items.append(numbers)
        elif isinstance(item, str):
            if text_problem(item) is not None:
                raise InvalidValueError(f"input {i} {text_problem(item)}")
            items.append(item)
        else:
            raise UsageError(f'embed takes strings or {{"prompt_token_ids": [...]}}; input {i} is '
                             f"{type(item).__name__}")  # fmt: skip
    return items


def _length_sorted_batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of at most batch_size, longest texts first (similar lengths share a batch)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def build_embedder(
    path: Path,
    hf_config,
    dtype: torch.dtype,
    device: torch.device,
    tokenizer,
    weights: Iterable[tuple[str, torch.Tensor]] | None,
    max_model_len: int | None = None,
) -> Embedder:
    """The Embedder for a model folder: registry row -> model_def, sentence-transformers settings, weights.

    `weights` are the checkpoint's (name, tensor) pairs (None: dummy weights); max_model_len, when
    given, replaces the checkpoint's max_seq_length; tokenizer None embeds token-id prompts only.
    """
    from llmctl.core import registry
    from llmctl.core.engine.embedding_config import read_embedding_config
    from llmctl.core.engine.loader import build_model
    from llmctl.core.engine.model_source import model_class

    model_cls = model_class(getattr(hf_config, "architectures", None), registry.EMBED)
    max_positions = model_cls.max_positions(hf_config)
    config = read_embedding_config(
        path if path.is_dir() else path.parent,
        hidden_size=hf_config.hidden_size,
        max_positions=max_positions,
        is_causal=model_cls.is_causal,
        tokenizer_max_length=getattr(tokenizer, "model_max_length", None),
    )
    if max_model_len is not None:
        if not 1 <= max_model_len <= max_positions:
            raise UsageError(f"max_model_len={max_model_len} is outside the model's 1..{max_positions} positions")
        config = dataclasses.replace(config, max_seq_length=max_model_len)
    model = build_model(hf_config, model_cls, dtype, device, weights)
    return Embedder(model, tokenizer, config, device, vocab_size=getattr(hf_config, "vocab_size", None))
