"""`llmctl bench` on embedding models: sentences/s beside transformers' AutoModel, and token-id inputs to embed()."""

from __future__ import annotations

import io
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from llmctl.cli.bench import bench, render
from llmctl.cli.output import handle_errors
from llmctl.core.bench import BenchConfig, run_bench
from llmctl.core.bench_embed import EMBED_RATIO_KEYS, embed_inputs, pool_padded
from llmctl.core.errors import UsageError

EMBED_SIDE_KEYS = {"load_s", "sentences_per_s", "tokens_per_s", "elapsed_s", "num_sentences", "num_tokens",
                   "peak_gpu_memory_gib"}  # fmt: skip
EMBED_TOP_KEYS = {
    "model", "model_path", "task", "weights", "device", "device_name", "dtype", "torch_version",
    "transformers_version", "llmctl_version", "date", "settings", "protocol", "llmctl", "transformers",
    "ratio_llmctl_over_transformers", "cosine_similarity",
}  # fmt: skip
SMALL = dict(device="cpu", random_weights=True, batch_size=4, num_prompts=10, embed_min_len=5, embed_max_len=200)


@pytest.fixture(scope="module")
def against(tiny_bert_dir):
    return run_bench(BenchConfig(model=str(tiny_bert_dir), against="transformers", **SMALL))


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("bench")(handle_errors(bench))
    app.command("other")(lambda: None)
    return app


def test_embed_result_keys_and_counts(against):
    assert EMBED_TOP_KEYS <= set(against)
    assert against["task"] == "embed" and against["weights"] == "random" and against["dtype"] == "float32"
    assert set(against["llmctl"]) == EMBED_SIDE_KEYS and set(against["transformers"]) == EMBED_SIDE_KEYS
    s = against["settings"]
    # the longest input is clipped to the fixture's 48 positions; CLS pooling, normalised (no ST files)
    assert (s["min_len"], s["max_len"], s["batch_size"], s["num_prompts"]) == (5, 48, 4, 10)
    assert s["pooling"] == "cls" and s["normalize"] is True
    for side in (against["llmctl"], against["transformers"]):
        assert side["num_sentences"] == 10
        assert 10 * 5 <= side["num_tokens"] <= 10 * 48
        assert side["sentences_per_s"] == pytest.approx(10 / side["elapsed_s"])
        assert side["tokens_per_s"] == pytest.approx(side["num_tokens"] / side["elapsed_s"])
        assert side["load_s"] > 0 and side["peak_gpu_memory_gib"] is None
    assert against["llmctl"]["num_tokens"] == against["transformers"]["num_tokens"]


def test_embed_ratios_are_llmctl_over_transformers(against):
    ratio = against["ratio_llmctl_over_transformers"]
    assert set(ratio) == set(EMBED_RATIO_KEYS)
    for key in EMBED_RATIO_KEYS:
        assert ratio[key] == pytest.approx(against["llmctl"][key] / against["transformers"][key])


def test_handed_over_weights_give_the_same_vectors(against):
    cos = against["cosine_similarity"]
    assert cos["inputs"] == 10
    assert cos["min"] > 0.9999  # float32 on CPU, transformers' random tensors copied into llmctl


def test_cosine_detects_different_weights(tiny_bert_dir):
    result = run_bench(BenchConfig(model=str(tiny_bert_dir), against="transformers", handover="none", **SMALL))
    assert result["cosine_similarity"]["min"] < 0.99  # each side drew its own random weights


def test_embed_without_against(tiny_bert_dir):
    result = run_bench(BenchConfig(model=str(tiny_bert_dir), **SMALL))
    assert result["transformers"] is None and result["ratio_llmctl_over_transformers"] is None
    assert result["cosine_similarity"] is None and result["llmctl"]["num_sentences"] == 10


def test_embed_default_batch_and_prompt_count_on_cpu(tiny_bert_dir):
    cfg = BenchConfig(model=str(tiny_bert_dir), device="cpu", random_weights=True, embed_min_len=4, embed_max_len=6)
    result = run_bench(cfg)
    assert result["settings"]["batch_size"] == 64 and result["settings"]["num_prompts"] == 4 * 64


def test_cli_json_and_table(tiny_bert_dir):
    args = ["bench", str(tiny_bert_dir), "--random-weights", "--device", "cpu", "--batch-size", "3",
            "--num-prompts", "7", "--min-len", "8", "--max-len", "20", "--against", "transformers", "--json"]  # fmt: skip
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert EMBED_TOP_KEYS <= set(data) and data["task"] == "embed"
    assert data["llmctl"]["num_sentences"] == 7
    assert (data["settings"]["min_len"], data["settings"]["max_len"]) == (8, 20)
    assert data["cosine_similarity"]["min"] > 0.9999

    from rich.console import Console

    buf = io.StringIO()
    render(Console(file=buf, width=200), data)
    text = buf.getvalue()
    labels = ("sentences/s", "tokens/s", "llmctl/transformers", "cosine similarity", "7 inputs of 8-20 tokens")
    for label in labels:
        assert label in text
    assert f"{data['llmctl']['sentences_per_s']:.1f}" in text


def test_embed_max_model_len_beyond_positions_is_a_usage_error(tiny_bert_dir):
    res = CliRunner().invoke(_app(), ["bench", str(tiny_bert_dir), "--random-weights", "--device", "cpu",
                                      "--max-model-len", "100"])  # fmt: skip
    assert res.exit_code == 2 and "max_model_len=100" in res.stderr


def test_embed_inputs_reproducible_in_range_and_avoid_pad():
    a = embed_inputs(50, 3, 9, vocab_size=6, seed=1, avoid=2)
    assert a == embed_inputs(50, 3, 9, vocab_size=6, seed=1, avoid=2)
    assert a != embed_inputs(50, 3, 9, vocab_size=6, seed=2, avoid=2)
    assert all(3 <= len(x) <= 9 for x in a)
    ids = {t for x in a for t in x}
    assert ids == {0, 1, 3, 4, 5}  # every id but the pad id
    assert {len(x) for x in a} == set(range(3, 10))


@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "lasttoken"])
def test_padded_pooling_matches_packed_pooling(pooling):
    from llmctl.core.engine.pooling import pool

    torch.manual_seed(0)
    lens = [5, 2, 3]
    seqs = [torch.randn(n, 4) for n in lens]
    padded = torch.full((3, 5, 4), 7.0)  # padding rows hold junk that must not leak into the result
    mask = torch.zeros(3, 5, dtype=torch.long)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
        mask[i, : len(s)] = 1
    packed = pool(torch.cat(seqs), torch.tensor(lens), pooling)
    torch.testing.assert_close(pool_padded(padded, mask, pooling), packed)


# -- token-id inputs to LLM(task="embed") -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_llm(tiny_bert_dir):
    from llmctl import LLM

    return LLM(str(tiny_bert_dir), task="embed", device="cpu", load_format="dummy", skip_tokenizer_init=True)


def test_token_id_inputs_embed_in_order_and_truncate(bare_llm):
    short, long = [5, 6, 7], list(range(1, 61))  # 60 tokens, 48 positions
    outs = bare_llm.embed([{"prompt_token_ids": long}, {"prompt_token_ids": short}])
    assert [o.prompt_token_ids for o in outs] == [long[:48], short]
    assert [o.truncated for o in outs] == [True, False]
    assert outs[0].prompt is None and len(outs[1].outputs.embedding) == 32
    alone = bare_llm.embed({"prompt_token_ids": short})[0].outputs.embedding
    torch.testing.assert_close(torch.tensor(alone), torch.tensor(outs[1].outputs.embedding))


def test_text_without_tokenizer_and_bad_token_ids_are_usage_errors(bare_llm):
    with pytest.raises(UsageError, match="no tokenizer"):
        bare_llm.embed(["hello"])
    with pytest.raises(UsageError, match="list of integers"):
        bare_llm.embed([{"prompt_token_ids": [1, "2"]}])
    with pytest.raises(UsageError, match="no tokens"):
        bare_llm.embed([{"prompt_token_ids": []}])
