"""Token embedding and LM head (tied to the embedding or not)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmctl.kernels.dispatch import get_op


class VocabEmbedding(nn.Module):
    """input_ids (T,) -> (T, H)."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"


class LMHead(nn.Module):
    """hidden (N, H) -> logits (N, V); tie() shares the embedding's weight (tie_word_embeddings)."""

    def __init__(self, vocab_size: int, hidden_size: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(vocab_size), requires_grad=False) if bias else None

    def tie(self, embedding: VocabEmbedding) -> None:
        self.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return get_op("linear", hidden.device)(hidden, self.weight, self.bias)  # a GEMV kernel for decode rows

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"
