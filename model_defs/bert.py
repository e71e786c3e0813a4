"""Inference-only BERT and XLM-RoBERTa encoders (embedding backbones) compatible with HF weights."""

from __future__ import annotations

import torch
from torch import nn

from llmctl.core.errors import UnsupportedModelError
from llmctl.model_defs.base import EmbeddingModel
from llmctl.model_defs.layers.act_fn import get_act_fn
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import VocabEmbedding
from llmctl.model_defs.layers.layernorm import LayerNorm
from llmctl.model_defs.layers.linear import Linear, QKVLinear
from llmctl.model_defs.weights_mapper import WeightsMapper


class BertEmbeddings(nn.Module):
    """input_ids (T,), positions (T,) -> word + position + token-type embeddings, layer-normed (T, H)."""

    def __init__(self, config, position_offset: int = 0):
        super().__init__()
        kind = getattr(config, "position_embedding_type", "absolute") or "absolute"
        if kind != "absolute":
            raise UnsupportedModelError(f"position_embedding_type={kind!r} is not supported (only 'absolute')")
        self.word_embeddings = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = VocabEmbedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = VocabEmbedding(max(config.type_vocab_size, 1), config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.position_offset = position_offset

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions + self.position_offset)
        if token_type_ids is None:  # one segment per text: type 0 everywhere
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    """Checkpoint query / key / value fill shards q / k / v of qkv_proj; bidirectional within each sequence."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.qkv_proj = QKVLinear(config.hidden_size, self.head_dim, self.num_heads, self.num_heads, bias=True)
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5, self.num_heads, layer_idx)
        self.hidden_size = config.hidden_size

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split([self.hidden_size] * 3, dim=-1)  # 3 x (T, H)
        return self.attn(q, k, v, ctx)


class BertSelfOutput(nn.Module):
    """dense, then LayerNorm over (dense output + residual): BERT's post-norm."""

    def __init__(self, config, in_features: int):
        super().__init__()
        self.dense = Linear(in_features, config.hidden_size, bias=True)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden_states), residual)


class BertAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        # HF names the self-attention submodule "self": checkpoint keys read attention.self.query.weight.
        self.self = BertSelfAttention(config, layer_idx)
        self.output = BertSelfOutput(config, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.output(self.self(hidden_states, ctx), hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.intermediate_act_fn = get_act_fn(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))  # (T, I)


class BertLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.attention = BertAttention(config, layer_idx)
        self.intermediate = BertIntermediate(config)
        self.output = BertSelfOutput(config, config.intermediate_size)

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        attn_out = self.attention(hidden_states, ctx)
        return self.output(self.intermediate(attn_out), attn_out)


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(self, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states, ctx)
        return hidden_states


class BertModel(EmbeddingModel):
    """model(input_ids (T,), positions (T,), ctx) -> last hidden state (T, H) of a packed, padding-free batch.

    positions restart at 0 for every sequence. The checkpoint's pooler and MLM head are not used for
    embeddings; checkpoints saved from *ForMaskedLM / *ForSequenceClassification carry a "bert." /
    "roberta." prefix, which the weights mapper strips.
    """

    weights_mapper = WeightsMapper(
        strip_prefixes=("bert.", "roberta."),
        ignored_prefixes=("pooler.", "cls.", "lm_head.", "classifier.", "embeddings.position_ids"),
        renamed_suffixes={".gamma": ".weight", ".beta": ".bias"},  # old (TF-era) LayerNorm names
        packed={"query": ("qkv_proj", "q"), "key": ("qkv_proj", "k"), "value": ("qkv_proj", "v")},
    )
    position_offset = 0

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config, self.position_offset_of(config))
        self.encoder = BertEncoder(config)

    @classmethod
    def position_offset_of(cls, config) -> int:
        return cls.position_offset

    @classmethod
    def max_positions(cls, config) -> int:
        """The longest sequence the position table holds."""
        return config.max_position_embeddings - cls.position_offset_of(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: ForwardContext,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.encoder(self.embeddings(input_ids, positions, token_type_ids), ctx)


class XLMRobertaModel(BertModel):
    """BERT with fairseq positions: position ids start at padding_idx + 1 (pad_token_id, 1 in XLM-R checkpoints)."""

    @classmethod
    def position_offset_of(cls, config) -> int:
        pad = getattr(config, "pad_token_id", None)
        return (1 if pad is None else pad) + 1
