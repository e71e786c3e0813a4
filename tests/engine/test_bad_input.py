"""Bad input to the engine and to `llmctl generate`: a clear error for the whole call or for the one record.

A bad record gets an error record at its index and the others still run (exit 1); a bad option or value is
one line with exit 2; a config or checkpoint that cannot be read is one line with exit 3; nothing ends as
`internal error`, and nothing starts building a model the config or the device cannot hold.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
from typer.testing import CliRunner

from llmctl import LLM, SamplingParams
from llmctl.cli.app import app
from llmctl.core.errors import (
    InvalidValueError,
    ModelReadError,
    UnsupportedModelError,
    UsageError,
    WeightLoadError,
)

GREEDY = SamplingParams(temperature=0.0, max_tokens=2)
FAST = ["--max-tokens", "2", "--device", "cpu", "--json", "--no-chat"]


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(str(tiny_llama_dir), device="cpu", kv_cache_memory=1 << 20)


@pytest.fixture
def variant(tiny_llama_dir, tmp_path):
    """variant(**config changes) -> a copy of the tiny checkpoint with config.json changed (None removes a key)."""

    def make(**changes):
        folder = tmp_path / f"v{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_llama_dir, folder)
        config = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    return make


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _one_line(stderr: str, *words: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("llmctl: warning:")]
    assert lines and lines[0].startswith("llmctl: error:"), stderr
    assert all(line.startswith(("llmctl: error:", "  hint:")) for line in lines), stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
    for word in words:
        assert word in lines[0], (word, stderr)


# -- the Python API --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ids,words", [
    ([1.7, 2.2], "integers"),  # not truncated to [1, 2]
    ([True, 3], "integers"),
    (["5", 6], "integers"),
    ("5 6", "list of integers"),
    ([5, 10**6], "outside the vocabulary"),
    ([-1, 5], "outside the vocabulary"),
])
def test_bad_prompt_token_ids_are_error_records_and_the_rest_run(llm, ids, words):
    outs = llm.generate([{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": ids}, "Hello"], GREEDY)
    assert outs[1].error is not None and words in outs[1].error and outs[1].outputs[0].token_ids == []
    assert outs[0].error is None and len(outs[0].outputs[0].token_ids) == 2
    assert outs[2].error is None and len(outs[2].outputs[0].token_ids) == 2


def test_integer_like_token_ids_are_accepted(llm):
    import numpy as np
    import torch

    a = llm.generate({"prompt_token_ids": np.array([5, 6])}, GREEDY)[0]
    b = llm.generate({"prompt_token_ids": torch.tensor([5, 6])}, GREEDY)[0]
    assert a.error is None and b.error is None and a.outputs[0].token_ids == b.outputs[0].token_ids


@pytest.mark.parametrize("text", ["\ud800", "ok \udcff then"])
def test_text_that_is_not_unicode_is_an_error_record(llm, text):
    outs = llm.generate(["Hello", text, "The"], GREEDY)
    assert "not valid Unicode" in outs[1].error
    assert outs[0].error is None and outs[2].error is None


@pytest.mark.parametrize("kwargs,error,words", [
    ({"seed": 10**23}, InvalidValueError, "seed"),
    ({"device": "tpu"}, InvalidValueError, "device"),
    ({"device": "cuda:-1"}, InvalidValueError, "device"),
    ({"gpu_memory_utilization": float("nan")}, UsageError, "gpu_memory_utilization"),
    ({"max_model_len": 100000}, UsageError, "more than the model's 128 positions"),
    ({"max_model_len": 0}, InvalidValueError, "max_model_len"),
    ({"max_num_seqs": 2.5}, InvalidValueError, "max_num_seqs"),
    ({"kv_cache_memory": float("nan")}, InvalidValueError, "kv_cache_memory"),
    ({"num_kv_blocks": -1}, InvalidValueError, "num_kv_blocks"),
    ({"block_size": True}, InvalidValueError, "block_size"),
])
def test_bad_engine_arguments(tiny_llama_dir, kwargs, error, words):
    with pytest.raises(error, match=words) as info:
        LLM(str(tiny_llama_dir), **{"device": "cpu", **kwargs})
    assert "\n" not in info.value.message


def test_max_model_len_uses_the_rule_check_uses(tiny_llama_dir):
    from llmctl.core.support import max_model_len_problem

    with pytest.raises(UsageError) as info:
        LLM(str(tiny_llama_dir), device="cpu", max_model_len=100000)
    assert info.value.message == max_model_len_problem(100000, 128)


BAD_CONFIGS = [
    ({"quantization_config": "gptq"}, ModelReadError, "quantization_config"),
    ({"quantization_config": {"quant_method": "gptq", "bits": "four"}}, ModelReadError, "bits"),
    ({"rope_parameters": {"rope_type": "linear", "factor": "x", "rope_theta": 10000.0}}, ModelReadError, "factor"),
    ({"max_position_embeddings": -1}, ModelReadError, "max_position_embeddings"),
    ({"intermediate_size": -1}, ModelReadError, "intermediate_size"),
    ({"hidden_size": 66, "head_dim": None}, ModelReadError, "does not split"),
    ({"dtype": "float128"}, ModelReadError, "float128"),
    ({"hidden_size": 60, "head_dim": None}, ModelReadError, "rotary dimension"),  # transformers' own refusal
    ({"num_hidden_layers": 10**12}, ModelReadError, "num_hidden_layers"),
    ({"architectures": ["FooBarForCausalLM"], "model_type": "foobar"}, UnsupportedModelError, "not supported"),
]


@pytest.mark.parametrize("changes,error,words", BAD_CONFIGS, ids=[str(c[0])[:40] for c in BAD_CONFIGS])
def test_bad_configs_are_refused_before_anything_is_built(variant, changes, error, words):
    with pytest.raises(error, match=words) as info:
        LLM(str(variant(**changes)), device="cpu")
    assert "\n" not in info.value.message


def test_config_deeper_than_json_allows(variant):
    folder = variant()
    (folder / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ModelReadError, match="nested"):
        LLM(str(folder), device="cpu")


def test_more_layers_than_the_checkpoint_fails_before_building(variant):
    t0 = time.perf_counter()
    with pytest.raises(WeightLoadError, match="asks for 50,000 layers but the checkpoint holds 2"):
        LLM(str(variant(num_hidden_layers=50_000)), device="cpu")
    assert time.perf_counter() - t0 < 30  # building 50,000 layers first would take minutes


def test_a_model_larger_than_the_device_fails_before_building(variant):
    big = variant(hidden_size=65536, num_attention_heads=512, num_key_value_heads=512, head_dim=128,
                  intermediate_size=262144, num_hidden_layers=1000)
    with pytest.raises(UnsupportedModelError, match="the weights alone need .* GiB"):
        LLM(str(big), device="cpu", load_format="dummy")


def test_integer_tensor_for_a_float_weight_is_refused(variant):
    import safetensors.torch as st
    import torch

    folder = variant()
    weights = st.load_file(folder / "model.safetensors")
    weights["model.embed_tokens.weight"] = (weights["model.embed_tokens.weight"] * 100).to(torch.int32)
    st.save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightLoadError, match="int32"):
        LLM(str(folder), device="cpu")


# -- llmctl generate -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_line,words", [
    ('{"prompt": "\\ud800"}', "not valid Unicode"),
    ('{"messages": [{"role": "user", "content": "x\\udfff"}]}', "not valid Unicode"),
    ('{"prompt": ' * 100_000 + '"x"' + "}" * 100_000, "does not parse"),
    ('{"prompt": "x", "n": ' + "[" * 500 + "]" * 500 + "}", "nested"),
    ('{"prompt": NaN}', "does not parse"),
], ids=["surrogate", "surrogate-in-messages", "100k-deep", "500-deep", "nan"])
def test_bad_jsonl_records_do_not_take_the_good_ones_with_them(tiny_llama_dir, bad_line, words):
    lines = '{"prompt": "Hello"}\n' + bad_line + "\n" + '{"prompt": "The"}\n'
    result = CliRunner().invoke(app, ["generate", "-m", str(tiny_llama_dir), *FAST], input=lines)
    assert result.exit_code == 1, result.stderr
    records = _records(result.stdout)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert "text" in records[0] and "text" in records[2]
    assert words in records[1]["error"]
    assert "internal error" not in result.stderr


def test_a_prompt_argument_with_a_stray_byte(tiny_llama_dir):
    # A byte that is not UTF-8 on the command line reaches Python as a lone surrogate ("\udcff").
    result = CliRunner().invoke(app, ["generate", "-m", str(tiny_llama_dir), "-p", "Hello", "-p", "a\udcffb", *FAST])
    assert result.exit_code == 1
    records = _records(result.stdout)
    assert "text" in records[0] and "not valid Unicode" in records[1]["error"]


@pytest.mark.parametrize("option,words", [
    (["--temperature", "nan"], "temperature"),
    (["--repetition-penalty", "nan"], "repetition_penalty"),
    (["--top-p", "nan"], "top_p"),
    (["--seed", str(10**23)], "seed"),
    (["--device", "tpu"], "device"),
    (["--device", "cuda:-1"], "device"),
    (["--system", "\udcff"], "--system"),
])
def test_bad_options_are_usage_errors(tiny_llama_dir, option, words):
    args = ["generate", "-m", str(tiny_llama_dir), "-p", "Hello", "--max-tokens", "2", "--json", "--no-chat", *option]
    if "--device" not in option:
        args += ["--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.stderr
    _one_line(result.stderr, words)


@pytest.mark.parametrize("changes,code,words", [(c, 1 if e is UnsupportedModelError else 3, w)
                                                for c, e, w in BAD_CONFIGS])
def test_generate_on_bad_configs(variant, changes, code, words):
    result = CliRunner().invoke(app, ["generate", "-m", str(variant(**changes)), "-p", "Hello", *FAST])
    assert result.exit_code == code, result.stderr
    _one_line(result.stderr, words)


def test_embed_query_that_is_not_unicode(tmp_path):
    (tmp_path / "lines.txt").write_text("a\nb\n")
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "lines.txt"), "--query", "x\udcff"])
    assert result.exit_code == 2
    _one_line(result.stderr, "--query")
