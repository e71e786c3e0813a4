"""LLM(task="embed") vs sentence-transformers and transformers: all-MiniLM-L6-v2, tiny BERT / XLM-R / decoders."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llmctl import LLM
from llmctl.core import registry
from llmctl.core.engine.pooling import pool
from llmctl.core.errors import UnsupportedModelError, UsageError

ENCODERS = ["bert_cls", "bert_prefixed_mean", "xlmr_mean", "xlmr_max"]  # <arch>_<pooling>, see conftest.py
DECODERS = ["LlamaModel", "MistralModel", "Qwen3Model"]

# Architectures whose registry rows claim "strict": each is checked against transformers below.
CONSISTENCY_ARCHITECTURES = ["BertModel", "XLMRobertaModel", "MistralModel", "LlamaModel", "Qwen3Model"]

MINILM_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "   ",
    "a",
    "Héllo wörld — naïve café, façade, coöperate.",
    "日本語のテキストも埋め込めます。",
    "Эмбеддинги для русского текста.",
    "emoji 🚀🔥 and symbols ∑∫√ ≤ ≥",
    "def embed(texts):\n    return [model(t) for t in texts]",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name;",
    "https://example.com/path?query=1&b=2#frag",
    "1234567890 3.14159 -42 1e-9",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "tabs\tand\nnewlines\r\ninside",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "A man is eating food.",
    "A man is riding a horse.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<html><body><p>markup</p></body></html>",
    '{"json": [1, 2, 3], "nested": {"k": null}}',
    "The " + "very " * 300 + "long line that is cut at 256 tokens.",
    " ".join(f"token{i}" for i in range(200)),
    "Short.",
    "Machine learning models turn sentences into vectors.",
    "¿Dónde está la biblioteca? ¡Aquí!",
    "مرحبا بالعالم",
    "x" * 1000,
]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return LLM(str(minilm_path), task="embed")


@pytest.fixture(scope="module")
def minilm_st(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


def _vectors(outs) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in outs])


def _assert_same_vectors(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    cos = F.cosine_similarity(ours, ref, dim=-1)
    assert cos.min().item() >= 0.9999, cos
    torch.testing.assert_close(ours.norm(dim=-1), ref.norm(dim=-1), rtol=1e-5, atol=1e-5)


def test_registry_rows_are_native_and_listed():
    for arch in CONSISTENCY_ARCHITECTURES:
        row = registry.get_arch(arch)
        assert row.status == "native" and row.level == "strict" and registry.EMBED in row.tasks
        assert registry.load_model_class(row).__name__ == arch


def test_minilm_matches_sentence_transformers(minilm, minilm_st):
    cfg = minilm.embedding_config
    assert (cfg.pooling, cfg.normalize, cfg.max_seq_length, cfg.dimension) == ("mean", True, 256, 384)
    outs = minilm.embed(MINILM_LINES, batch_size=5)
    ref = minilm_st.encode(MINILM_LINES, convert_to_tensor=True, batch_size=7).float()
    _assert_same_vectors(_vectors(outs), ref)
    assert [o.prompt for o in outs] == MINILM_LINES

    full = minilm.get_tokenizer()(MINILM_LINES, verbose=False)["input_ids"]
    expected_cut = [len(ids) > 256 for ids in full]
    assert sum(expected_cut) >= 2
    assert [o.truncated for o in outs] == expected_cut
    assert all(len(o.prompt_token_ids) == min(len(ids), 256) for o, ids in zip(outs, full))


def test_minilm_single_string_and_encode_alias(minilm):
    one = minilm.embed("A man is eating food.")
    assert len(one) == 1
    again = minilm.encode(["A man is eating food."])
    assert one[0].outputs.embedding == pytest.approx(again[0].outputs.embedding, abs=1e-6)


def test_batching_keeps_input_order(minilm):
    lines = MINILM_LINES[:12]
    base = _vectors(minilm.embed(lines, batch_size=64))
    for batch_size in (1, 3):
        torch.testing.assert_close(_vectors(minilm.embed(lines, batch_size=batch_size)), base, rtol=1e-4, atol=1e-5)


def test_dimensions_truncate_then_renormalise(minilm):
    lines = MINILM_LINES[:6]
    raw = _vectors(minilm.embed(lines, normalize=False))
    short = _vectors(minilm.embed(lines, dimensions=64))
    assert short.shape == (6, 64)
    torch.testing.assert_close(short, F.normalize(raw[:, :64], dim=-1), rtol=1e-4, atol=1e-5)
    short_raw = _vectors(minilm.embed(lines, dimensions=64, normalize=False))
    torch.testing.assert_close(short_raw, raw[:, :64], rtol=1e-4, atol=1e-5)
    for bad in (0, 385, -1):
        with pytest.raises(UsageError):
            minilm.embed(lines, dimensions=bad)


def test_pooling_override_and_errors(minilm):
    lines = ["A man is eating food.", "Short."]
    ids = [o.prompt_token_ids for o in minilm.embed(lines)]
    cls = _vectors(minilm.embed(lines, pooling="cls", normalize=False))
    hidden, lens = minilm.embedder.forward_batch(ids)
    torch.testing.assert_close(cls, hidden[[0, len(ids[0])]], rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError):
        minilm.embed(lines, pooling="median")
    with pytest.raises(UsageError):
        minilm.embed([1, 2])
    with pytest.raises(UsageError):
        minilm.generate("hello")


def test_pool_packed_matches_per_sequence():
    torch.manual_seed(0)
    lens = torch.tensor([3, 1, 5], dtype=torch.int32)
    hidden = torch.randn(int(lens.sum()), 8)
    parts = hidden.split(lens.tolist())
    expected = {
        "cls": torch.stack([p[0] for p in parts]),
        "lasttoken": torch.stack([p[-1] for p in parts]),
        "mean": torch.stack([p.mean(0) for p in parts]),
        "max": torch.stack([p.max(0).values for p in parts]),
    }
    for name, want in expected.items():
        torch.testing.assert_close(pool(hidden, lens, name), want)


@pytest.mark.parametrize("name", ENCODERS)
def test_tiny_encoder_matches_sentence_transformers(name, tiny_model, texts):
    from sentence_transformers import SentenceTransformer

    path = tiny_model(name)
    lines = texts(24, seed=1) + [""]
    llm = LLM(str(path), task="embed")
    assert llm.embedding_config.pooling == name.rsplit("_", 1)[1]
    max_seq_length = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
    outs = llm.embed(lines, batch_size=8)
    st = SentenceTransformer(str(path), device="cpu")
    ref = st.encode(lines, convert_to_tensor=True, batch_size=5).float()
    _assert_same_vectors(_vectors(outs), ref)
    assert any(o.truncated for o in outs)
    assert max(len(o.prompt_token_ids) for o in outs) == max_seq_length

    # The named prompt, prepended: sentence-transformers' prompt_name does the same.
    with_prompt = llm.embed(lines[:4], prompt=llm.embedding_config.prompts["query"])
    assert with_prompt[0].prompt == "hello world " + lines[0]
    ref_prompt = st.encode(lines[:4], prompt_name="query", convert_to_tensor=True).float()
    _assert_same_vectors(_vectors(with_prompt), ref_prompt)


def test_tiny_bert_hidden_states_match_transformers(tiny_model, texts):
    import transformers

    path = tiny_model("bert_cls")
    llm = LLM(str(path), task="embed")
    ref_model = transformers.AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = [o.prompt_token_ids for o in llm.embed(texts(5, seed=3, max_words=15))]
    hidden, _ = llm.embedder.forward_batch(ids)
    with torch.no_grad():
        ref = torch.cat([ref_model(input_ids=torch.tensor([s])).last_hidden_state[0] for s in ids])
    torch.testing.assert_close(hidden, ref, rtol=1e-5, atol=2e-5)  # float32 sums in another order


def test_default_prompt_is_applied(tiny_model, tmp_path):
    import shutil

    src = tiny_model("bert_cls")
    path = tmp_path / "with_default"
    shutil.copytree(src, path)
    meta = json.loads((path / "config_sentence_transformers.json").read_text())
    meta["default_prompt_name"] = "query"
    (path / "config_sentence_transformers.json").write_text(json.dumps(meta))
    llm = LLM(str(path), task="embed")
    lines = ["w1 w2", "w3"]
    outs = llm.embed(lines)
    assert [o.prompt for o in outs] == ["hello world w1 w2", "hello world w3"]
    explicit = llm.embed(["hello world w1 w2", "hello world w3"], prompt="")
    torch.testing.assert_close(_vectors(outs), _vectors(explicit))


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_lasttoken_matches_transformers(name, tiny_model, texts):
    import transformers

    path = tiny_model(name)
    llm = LLM(str(path), task="embed")
    cfg = llm.embedding_config
    assert (cfg.pooling, cfg.normalize) == ("lasttoken", True)
    lines = texts(6, seed=2, max_words=20) + [""]
    outs = llm.embed(lines, batch_size=4)
    ref_model = transformers.AutoModel.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    ref = []
    with torch.no_grad():
        for o in outs:
            hidden = ref_model.eval()(input_ids=torch.tensor([o.prompt_token_ids])).last_hidden_state
            ref.append(F.normalize(hidden[0, -1], dim=-1))
    _assert_same_vectors(_vectors(outs), torch.stack(ref))
    with pytest.raises(UsageError):
        llm.generate("w1 w2")


def test_max_model_len_and_task_errors(tiny_model):
    path = tiny_model("MistralModel")
    llm = LLM(str(path), task="embed", max_model_len=5)
    outs = llm.embed(["w1 w2 w3 w4 w5 w6", "w1"])
    assert [len(o.prompt_token_ids) for o in outs] == [5, 3]
    assert [o.truncated for o in outs] == [True, False]
    with pytest.raises(UsageError):
        LLM(str(path), task="embed", max_model_len=10_000)
    with pytest.raises(UnsupportedModelError):
        LLM(str(path), task="generate")
    assert LLM(str(path), task="auto").embedding_config.pooling == "lasttoken"
