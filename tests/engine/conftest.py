"""Fixtures for the engine tests: a tiny random Llama checkpoint with a small byte-level BPE tokenizer."""

from __future__ import annotations

import pytest
import torch

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

CORPUS = [
    "Hello, my name is Ada and I like to write programs.",
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention keeps the KV cache in fixed-size blocks.",
    "Continuous batching lets new requests join running ones between steps.",
    "Café, naïve, 東京, emoji 🙂 and numbers 12345.",
] * 4



def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(checkpoint dir, transformers model in float32 eval mode) for a 2-layer GQA Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.15,  # spread logits apart so float rounding never flips a greedy argmax
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float().eval()
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """Seven prompts of mixed lengths (one non-ASCII) for runs where requests finish at different steps."""
    return [
        "Hello, my name is",
        "The quick brown fox jumps over the lazy dog.",
        "Café",
        "Paged attention keeps",
        "Continuous batching lets new requests join",
        "numbers 12345",
        "Ada",
    ]


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_llama):
    return tiny_llama[0]


@pytest.fixture(scope="session")
def hf_greedy(tiny_llama):
    """hf_greedy(prompt_ids, n) -> n greedy tokens from transformers (full forward per step, no EOS stop)."""
    model = tiny_llama[1]
    cache: dict[tuple, list[int]] = {}

    @torch.no_grad()
    def run(prompt_ids: list[int], n: int) -> list[int]:
        key = (tuple(prompt_ids), n)
        if key not in cache:
            ids = list(prompt_ids)
            for _ in range(n):
                logits = model(torch.tensor([ids])).logits[0, -1]
                ids.append(int(logits.argmax()))
            cache[key] = ids[len(prompt_ids) :]
        return cache[key]

    return run
