"""Fixtures for the bench tests: a tiny random Llama checkpoint (no tokenizer: bench prompts are token ids)."""

from __future__ import annotations

import pytest
import torch



def _tiny_config(**overrides):
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.15,  # spread logits apart so float rounding never flips a greedy argmax
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A saved 2-layer GQA Llama checkpoint in float32 (config.json + model.safetensors)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_tiny_config()).float().eval()
    path = tmp_path_factory.mktemp("bench_tiny_llama")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_config_dir(tmp_path_factory):
    """A folder with only config.json (what --random-weights needs), with tied embeddings."""
    path = tmp_path_factory.mktemp("bench_tiny_config")
    config = _tiny_config(tie_word_embeddings=True)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A config.json-only BertModel folder (no tokenizer, no sentence-transformers files: CLS pooling)."""
    from transformers import BertConfig

    path = tmp_path_factory.mktemp("bench_tiny_bert")
    config = BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=48, architectures=["BertModel"],
    )  # fmt: skip
    config.save_pretrained(path)
    return path
