"""`llmctl bench` on a tiny random Llama: the protocol's numbers are present, positive and consistent."""

from __future__ import annotations

import io
import json

import pytest
import typer
from typer.testing import CliRunner

from llmctl.cli.bench import bench, render
from llmctl.cli.output import handle_errors
from llmctl.core.bench import RATIO_KEYS, BenchConfig, leading_match, random_prompts, run_bench
from llmctl.core.errors import UsageError

SIDE_KEYS = {
    "load_s", "init_s", "cuda_graph_capture_s", "ttft_ms", "decode_tok_s", "batch_output_tok_s",
    "offline_output_tok_s", "offline_total_tok_s", "offline_elapsed_s", "offline_output_tokens",
    "peak_gpu_memory_gib",
}  # fmt: skip
TOP_KEYS = {
    "model", "model_path", "weights", "device", "device_name", "dtype", "torch_version", "transformers_version",
    "llmctl_version", "date", "settings", "protocol", "llmctl", "transformers", "ratio_llmctl_over_transformers",
    "greedy_tokens_matching",
}  # fmt: skip
SMALL = dict(device="cpu", batch_size=3, input_len=8, output_len=5, num_prompts=4, repeats=2)


@pytest.fixture(scope="module")
def against(tiny_llama_dir):
    """One checkpoint run beside transformers, shared by the tests that read its numbers."""
    return run_bench(BenchConfig(model=str(tiny_llama_dir), against="transformers", **SMALL))


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("bench")(handle_errors(bench))
    app.command("other")(lambda: None)  # two commands: Typer keeps the "bench" subcommand name
    return app


def _positive_numbers(side: dict, keys) -> None:
    for key in keys:
        assert side[key] > 0, key


def test_result_has_every_key(against):
    assert TOP_KEYS <= set(against)
    assert set(against["llmctl"]) == SIDE_KEYS
    assert set(against["transformers"]) == SIDE_KEYS
    assert against["device"] == "cpu" and against["dtype"] == "float32"
    assert against["weights"] == "checkpoint"
    assert against["settings"]["num_prompts"] == 4 and against["settings"]["batch_size"] == 3


def test_numbers_positive_and_consistent(against):
    ours, hf = against["llmctl"], against["transformers"]
    _positive_numbers(ours, ("load_s", "init_s", "ttft_ms", "decode_tok_s", "batch_output_tok_s",
                             "offline_output_tok_s", "offline_total_tok_s", "offline_elapsed_s"))
    _positive_numbers(hf, ("load_s", "ttft_ms", "decode_tok_s", "batch_output_tok_s"))
    assert ours["init_s"] >= ours["load_s"]  # the engine's init includes building the model
    # every offline prompt produced exactly output_len tokens (EOS masked), and total counts the prompts too
    assert ours["offline_output_tokens"] == 4 * 5
    elapsed = ours["offline_elapsed_s"]
    assert ours["offline_output_tok_s"] == pytest.approx(20 / elapsed)
    assert ours["offline_total_tok_s"] == pytest.approx((20 + 4 * 8) / elapsed)
    # CPU: no GPU memory, no CUDA graphs; transformers has no offline number
    assert ours["peak_gpu_memory_gib"] is None and ours["cuda_graph_capture_s"] is None
    assert hf["offline_output_tok_s"] is None


def test_ratios_are_llmctl_over_transformers(against):
    ratio = against["ratio_llmctl_over_transformers"]
    assert set(ratio) == set(RATIO_KEYS)
    for key in RATIO_KEYS:
        assert ratio[key] == pytest.approx(against["llmctl"][key] / against["transformers"][key])


def test_same_weights_give_the_same_greedy_tokens(against):
    # float32 on CPU, transformers' tensors copied into llmctl: the greedy continuations agree in full
    assert against["greedy_tokens_matching"] == 5


def test_random_weights_without_against(tiny_config_dir):
    result = run_bench(BenchConfig(model=str(tiny_config_dir), random_weights=True, **SMALL))
    assert result["weights"] == "random"
    assert result["transformers"] is None and result["ratio_llmctl_over_transformers"] is None
    assert result["greedy_tokens_matching"] is None
    assert result["llmctl"]["offline_output_tokens"] == 4 * 5
    _positive_numbers(result["llmctl"], ("decode_tok_s", "batch_output_tok_s", "ttft_ms"))


def test_cli_json_random_weights_against_transformers(tiny_config_dir):
    args = ["bench", str(tiny_config_dir), "--random-weights", "--device", "cpu", "--batch-size", "2",
            "--input-len", "6", "--output-len", "4", "--num-prompts", "3", "--repeats", "1",
            "--against", "transformers", "--max-num-seqs", "2", "--json"]  # fmt: skip
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert TOP_KEYS <= set(data)
    assert data["settings"]["against"] == "transformers" and data["settings"]["random_weights"] is True
    assert data["settings"]["max_num_seqs"] == 2
    assert data["llmctl"]["offline_output_tokens"] == 3 * 4
    # random init built by transformers, then the same tensors loaded into llmctl (tied embeddings)
    assert data["greedy_tokens_matching"] == 4


def test_human_table_shows_both_sides_and_ratio(against):
    from rich.console import Console

    buf = io.StringIO()
    render(Console(file=buf, width=200), against)
    text = buf.getvalue()
    for label in ("time to first token (ms)", "decode, batch 1 (tok/s)", "offline output (tok/s)",
                  "transformers", "llmctl/transformers", "the first 5 of 5 tokens agree"):  # fmt: skip
        assert label in text
    assert f"{against['llmctl']['decode_tok_s']:.1f}" in text


def test_architecture_without_native_def_is_refused_with_one_line(tmp_path):
    from transformers import MixtralConfig

    config = MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, architectures=["MixtralForCausalLM"])  # fmt: skip
    config.save_pretrained(tmp_path)
    res = CliRunner().invoke(_app(), ["bench", str(tmp_path), "--random-weights", "--device", "cpu"])
    assert res.exit_code == 1
    assert "no model definition for MixtralForCausalLM" in res.stderr and "Traceback" not in res.stderr


def test_handover_on_the_device_gives_the_same_weights(tiny_config_dir):
    result = run_bench(BenchConfig(model=str(tiny_config_dir), random_weights=True, against="transformers",
                                   handover="device", **SMALL))  # fmt: skip
    assert result["greedy_tokens_matching"] == 5


def test_handover_none_gives_each_side_its_own_weights(tiny_config_dir):
    result = run_bench(BenchConfig(model=str(tiny_config_dir), random_weights=True, against="transformers",
                                   handover="none", **SMALL))  # fmt: skip
    assert result["transformers"] is not None and result["settings"]["handover"] == "none"
    assert result["greedy_tokens_matching"] is None  # different random weights: a match count would mean nothing


def test_cli_rejects_bad_lengths(tiny_config_dir):
    res = CliRunner().invoke(_app(), ["bench", str(tiny_config_dir), "--output-len", "1"])
    assert res.exit_code == 2
    res = CliRunner().invoke(
        _app(), ["bench", str(tiny_config_dir), "--random-weights", "--device", "cpu", "--max-model-len", "10"]
    )
    assert res.exit_code == 2 and "max_model_len" in res.stderr


@pytest.mark.parametrize(
    "kw",
    [dict(output_len=1), dict(input_len=0), dict(batch_size=0), dict(num_prompts=0), dict(against="vllm"),
     dict(repeats=0), dict(max_num_seqs=0), dict(handover="gpu"), dict(embed_min_len=0),
     dict(embed_min_len=32, embed_max_len=16)],  # fmt: skip
)
def test_config_validation(kw):
    with pytest.raises(UsageError):
        BenchConfig(model="x", **kw)


def test_random_prompts_are_reproducible_and_in_vocab():
    a = random_prompts(3, 7, 50, seed=1)
    assert a == random_prompts(3, 7, 50, seed=1)
    assert a != random_prompts(3, 7, 50, seed=2)
    assert len(a) == 3 and all(len(p) == 7 and all(0 <= t < 50 for t in p) for p in a)


def test_leading_match():
    assert leading_match([1, 2, 3], [1, 2, 4]) == 2
    assert leading_match([5], [6]) == 0
    assert leading_match([1, 2], [1, 2, 3]) == 2
