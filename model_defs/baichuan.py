"""Inference-only Baichuan / Baichuan2 (7B: rope, 13B: ALiBi; Baichuan2's normalised LM head) with HF weights."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from llmctl.core.config_keys import baichuan_uses_alibi
from llmctl.core.errors import UnsupportedModelError
from llmctl.model_defs.layers.embedding import LMHead
from llmctl.model_defs.llama import LlamaForCausalLM, LlamaModel
from llmctl.model_defs.weights_mapper import WeightsMapper

__all__ = ["BaiChuanForCausalLM", "BaichuanForCausalLM"]

# Baichuan2's vocabulary; vLLM tells Baichuan2 (normalised head) from Baichuan by it (vllm-project/vllm#1022): the
# configs name no head type, and Baichuan2-7B shares its architecture string with Baichuan-13B.
BAICHUAN2_VOCAB_SIZE = 125696


class NormHead(LMHead):
    """Baichuan2's head: logits = hidden @ normalize(weight).T, each vocabulary row L2-normalised. The rows are
    normalised once, as the checkpoint loads (in float32, then cast), not at every step."""

    def from_checkpoint_layout(self, param_name: str, tensor: torch.Tensor) -> torch.Tensor:
        return F.normalize(tensor.float(), dim=-1) if param_name == "weight" else tensor


class BaiChuanForCausalLM(LlamaForCausalLM):
    """Baichuan-7B (the architecture spelt with a capital C): Llama's decoder, multi-head, rope, with q|k|v stored
    fused as self_attn.W_pack (3 * hidden, hidden), the same layout as the fused qkv_proj."""

    weights_mapper = WeightsMapper(
        renamed_suffixes={".self_attn.W_pack.weight": ".self_attn.qkv_proj.weight"},
        packed={"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)},
    )

    def build_backbone(self, config) -> LlamaModel:
        architecture = type(self).__name__
        return LlamaModel(config, replace(self.variant, alibi=baichuan_uses_alibi(architecture, config.hidden_size)))

    def build_lm_head(self, config) -> LMHead:
        if config.vocab_size != BAICHUAN2_VOCAB_SIZE:
            return super().build_lm_head(config)
        if getattr(config, "tie_word_embeddings", False):  # normalising the head would normalise the embedding too
            raise UnsupportedModelError("a Baichuan2 checkpoint with tie_word_embeddings: its normalised head cannot "
                                        "share the input embedding")
        return NormHead(config.vocab_size, config.hidden_size)


class BaichuanForCausalLM(BaiChuanForCausalLM):
    """Baichuan-13B, Baichuan2-7B and Baichuan2-13B: rope at hidden size 4096 (Baichuan2-7B), ALiBi otherwise."""
