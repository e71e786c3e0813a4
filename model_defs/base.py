"""The model contract: every hook the engine uses on a model, declared once with its default."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from llmctl.core.errors import UnsupportedModelError
from llmctl.model_defs.layers.attention import Attention
from llmctl.model_defs.layers.context import ForwardContext
from llmctl.model_defs.layers.embedding import LMHead
from llmctl.model_defs.weights_mapper import WeightsMapper


def head_dim_of(config) -> int:
    # config.head_dim wins where set apart from hidden_size / num_attention_heads (Qwen3, Gemma's 256).
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def num_kv_heads_of(config) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def kv_cache_shape_of(model: nn.Module) -> tuple[int, int, int]:
    """(num_layers, num_kv_heads, head_dim) read from the Attention layers `model` built: what its cache must hold.

    Every layer gets a cache slice of the same shape, so layers that disagree (a family this engine does
    not size yet) are refused rather than given a cache that fits some of them.
    """
    layers = sorted((m for m in model.modules() if isinstance(m, Attention)), key=lambda m: m.layer_idx)
    if not layers:
        raise UnsupportedModelError(f"{type(model).__name__} has no attention layer to size a KV cache for")
    if [m.layer_idx for m in layers] != list(range(len(layers))):
        raise UnsupportedModelError(
            f"{type(model).__name__}'s attention layers are numbered {[m.layer_idx for m in layers]}, not 0..n-1"
        )
    shapes = {(m.num_kv_heads, m.head_dim) for m in layers}
    if len(shapes) > 1:
        raise UnsupportedModelError(
            f"{type(model).__name__}'s attention layers differ in (kv heads, head size): {sorted(shapes)}"
        )
    num_kv_heads, head_dim = shapes.pop()
    return len(layers), num_kv_heads, head_dim


class CausalLM(nn.Module):
    """A generation model: model(input_ids (T,), positions (T,), ctx) -> hidden (T, H); compute_logits -> (N, V).

    A family subclasses it and declares only what differs from these defaults; the engine uses nothing else
    of a model (besides its config and the layers it walks: Attention for the cache, RotaryEmbedding for the
    longest position). The backbone (`<Fam>Model`) is built under the checkpoint's name for it, the LM head
    beside it, tied to the input embedding when the config says so. ADDING_A_MODEL.md walks through one.
    """

    # The family's base model class: backbone_cls(config) (build_backbone may pass more, e.g. a variant).
    backbone_cls: ClassVar[type[nn.Module]]
    # The checkpoint's names: the backbone's attribute, its input embedding within it, the LM head's.
    backbone_name: ClassVar[str] = "model"
    input_embedding_name: ClassVar[str] = "embed_tokens"
    lm_head_name: ClassVar[str] = "lm_head"
    lm_head_bias: ClassVar[bool] = False
    # config.tie_word_embeddings when a config lacks the key (transformers' default differs per family).
    tie_word_embeddings_default: ClassVar[bool] = False
    # Checkpoint names -> parameter names: prefixes, ignored tensors, renames, packed (fused) parameters.
    weights_mapper: ClassVar[WeightsMapper] = WeightsMapper()
    # Decode steps may be captured in CUDA graphs (no host sync inside forward).
    supports_cuda_graphs: ClassVar[bool] = True
    # transformers builds and loads the model itself (model_defs/transformers_backend.py).
    is_transformers_backend: ClassVar[bool] = False

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.add_module(self.backbone_name, self.build_backbone(config))
        self.add_module(self.lm_head_name, self.build_lm_head(config))
        if getattr(config, "tie_word_embeddings", self.tie_word_embeddings_default):
            self.get_submodule(self.lm_head_name).tie(self.input_embeddings())

    def build_backbone(self, config) -> nn.Module:
        return self.backbone_cls(config)

    def build_lm_head(self, config) -> nn.Module:
        return LMHead(config.vocab_size, config.hidden_size, bias=self.lm_head_bias)

    def input_embeddings(self) -> nn.Module:
        return self.get_submodule(f"{self.backbone_name}.{self.input_embedding_name}")

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self._modules[self.backbone_name](input_ids, positions, ctx)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self._modules[self.lm_head_name](hidden_states)  # (N, H) -> (N, V)

    def kv_cache_shape(self) -> tuple[int, int, int]:
        """(num_layers, num_kv_heads, head_dim) of the paged KV cache, from the attention layers built."""
        return kv_cache_shape_of(self)

    def max_prompt_len(self) -> int | None:
        """The longest prompt computed as the model's reference computes it; None: any that fits max_model_len.
        Qwen v1 sets it: its remote code picks a rope for a longer prompt from the prompt's length."""
        return None


class EmbeddingModel(nn.Module):
    """An embedding backbone: model(input_ids (T,), positions (T,), ctx) -> last hidden states (T, H).

    The embedder pools the hidden states; the model declares its attention direction and position table.
    """

    weights_mapper: ClassVar[WeightsMapper] = WeightsMapper()
    # Causal (decoder, pooled at the last token) or bidirectional (encoder, pooled at CLS / mean).
    is_causal: ClassVar[bool] = False

    @classmethod
    def max_positions(cls, config) -> int:
        """The longest sequence the model can embed."""
        return config.max_position_embeddings
