"""Invalid config.json values and corrupt safetensors headers: `check` and `inspect-arch` refuse them in one line.

Exit 3 (the model cannot be read, README's table), the key named, never a traceback, never a wrong answer
(a floored head size, negative KV bytes, 10^24 parameters from a 441 KiB file).
"""

from __future__ import annotations

import json
import struct

import pytest
from typer.testing import CliRunner

from llmctl.cli.app import app
from llmctl.core.config_check import validate_config
from llmctl.core.errors import ModelReadError

LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
    "max_position_embeddings": 128, "torch_dtype": "bfloat16",
}
DEEP = json.loads("[" * 80 + "]" * 80)  # deeper than any config (core/values.py MAX_JSON_DEPTH)

# (name, changes to LLAMA, words the one error line must hold); None as a value removes the key.
BAD = [
    ("quantization_config string", {"quantization_config": "gptq"}, "quantization_config must be an object"),
    ("bits four", {"quantization_config": {"quant_method": "gptq", "bits": "four"}}, "bits"),
    ("bits zero", {"quantization_config": {"quant_method": "awq", "bits": 0}}, "bits"),
    ("rope factor x", {"rope_scaling": {"rope_type": "linear", "factor": "x"}}, "factor"),
    ("rope factor negative", {"rope_parameters": {"rope_type": "linear", "factor": -2.0}}, "factor"),
    ("rope list of strings", {"rope_scaling": {"rope_type": "longrope", "short_factor": ["a"]}}, "short_factor"),
    ("rope_scaling a number", {"rope_scaling": 2}, "rope_scaling"),
    ("rope_theta zero", {"rope_theta": 0}, "rope_theta"),
    ("max_position_embeddings -1", {"max_position_embeddings": -1}, "max_position_embeddings"),
    ("intermediate_size -1", {"intermediate_size": -1}, "intermediate_size"),
    ("hidden 385 / 12 heads", {"hidden_size": 385, "num_attention_heads": 12, "num_key_value_heads": 12},
     "does not split into 12"),
    ("odd rotary dimension", {"hidden_size": 60}, "rotary dimension 15"),  # head_dim 60 / 4 heads
    ("float128", {"torch_dtype": "float128"}, "float128"),
    ("dtype a dict", {"torch_dtype": None, "dtype": {"text": "bfloat16"}}, "dtype"),
    ("10^12 layers", {"num_hidden_layers": 10**12}, "num_hidden_layers"),
    ("vocab a string", {"vocab_size": "256"}, "vocab_size"),
    ("heads a float", {"num_attention_heads": 4.5}, "num_attention_heads"),
    ("hidden bool", {"hidden_size": True}, "hidden_size"),
    ("layers list", {"num_hidden_layers": [2, 2]}, "num_hidden_layers"),
    ("text_config string", {"text_config": "llama"}, "text_config"),
    ("layer_types numbers", {"layer_types": [1, 2]}, "layer_types"),
    ("nested 80 deep", {"extra": DEEP}, "nested"),
]


def _folder(tmp_path, changes=None, raw: bytes | None = None):
    config = dict(LLAMA)
    for key, value in (changes or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes(raw if raw is not None else json.dumps(config).encode())
    return folder


def _one_error_line(result, *words):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("llmctl: error:"), result.stderr
    assert all(line.startswith(("llmctl: error:", "  hint:")) for line in lines), result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("command", ["check", "inspect-arch"])
@pytest.mark.parametrize("name,changes,words", BAD, ids=[b[0] for b in BAD])
def test_bad_values_exit_3_with_one_line_naming_the_key(tmp_path, command, name, changes, words):
    result = CliRunner().invoke(app, [command, str(_folder(tmp_path, changes)), "--json"])
    assert result.exit_code == 3, (result.exit_code, result.stdout, result.stderr)
    _one_error_line(result, words)


@pytest.mark.parametrize("raw,words", [
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),  # past json's own recursion limit
    # NaN / Infinity parse (transformers writes them: Mamba-2's time_step_limit), but no size may be one
    (b'{"architectures": ["LlamaForCausalLM"], "hidden_size": NaN}', "hidden_size"),
    (b'{"architectures": ["LlamaForCausalLM"], "hidden_size": Infinity}', "hidden_size"),
    (b'{"model_type": "llama", "x": "\xff"}', "UTF-8"),
    (b'[1, 2]', "object"),
], ids=["deep", "nan", "infinity", "bad-byte", "list"])
@pytest.mark.parametrize("command", ["check", "inspect-arch"])
def test_unreadable_json_exits_3(tmp_path, command, raw, words):
    result = CliRunner().invoke(app, [command, str(_folder(tmp_path, raw=raw))])
    assert result.exit_code == 3, (result.stdout, result.stderr)
    _one_error_line(result, words)


def test_valid_variants_still_pass_the_validator():
    validate_config({**LLAMA, "hidden_size": 385, "num_attention_heads": 12, "head_dim": 32})  # explicit head size
    validate_config({**LLAMA, "intermediate_size": [128, 256], "num_key_value_heads": [2, 1]})  # per-layer lists
    validate_config({**LLAMA, "torch_dtype": "torch.float16", "rope_scaling": None, "quantization_config": None})
    validate_config({**LLAMA, "hidden_size": 64.0, "rope_parameters": {"full_attention": {"rope_theta": 1e6}}})
    with pytest.raises(ModelReadError, match="rope_theta"):
        validate_config({**LLAMA, "rope_parameters": {"full_attention": {"rope_theta": -1.0}}})


def test_check_agrees_with_generate_on_max_model_len(tmp_path):
    from llmctl.core.support import max_model_len_problem

    folder = _folder(tmp_path)
    result = CliRunner().invoke(app, ["check", str(folder), "--max-model-len", "100000", "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["supported"] is False
    assert any(max_model_len_problem(100000, 128) in reason for reason in data["reasons"])  # generate's words
    ok = CliRunner().invoke(app, ["check", str(folder), "--max-model-len", "128", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["supported"] is True


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_gpu_memory_must_be_finite(tmp_path, value):
    result = CliRunner().invoke(app, ["check", str(_folder(tmp_path)), "--gpu-memory", value])
    assert result.exit_code == 2  # a usage error (-inf already fails Click's own range check, also exit 2)
    _one_error_line(result, "gpu memory")


def test_gpu_memory_check_in_the_python_api(tmp_path):
    from llmctl.core.errors import InvalidValueError
    from llmctl.core.spec import spec_from_config
    from llmctl.core.support import verdict

    spec = spec_from_config(dict(LLAMA))
    for value in (float("nan"), float("inf"), -1.0):
        with pytest.raises(InvalidValueError):
            verdict(spec, gpu_memory_gib=value)
    assert verdict(spec, gpu_memory_gib=0.5).supported


def test_no_negative_kv_or_parameter_counts_reach_the_answer(tmp_path):
    folder = _folder(tmp_path)
    data = json.loads(CliRunner().invoke(app, ["inspect-arch", str(folder), "--json"]).stdout)
    assert data["num_parameters"] > 0 and data["kv_cache_bytes_per_token"] > 0


# -- safetensors headers ------------------------------------------------------------------------------


def _safetensors(path, header: dict, data_bytes: int) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_bytes)


GOOD = {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}
BAD_HEADERS = [
    ("huge shape", {"w": {"dtype": "F32", "shape": [10**12, 10**12], "data_offsets": [0, 400]}}, 400, "shape"),
    ("past the end", {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, 32, "ends at byte"),
    ("span mismatch", {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 60]}}, 64, "bytes of data"),
    ("unknown dtype", {"w": {"dtype": "F128", "shape": [2], "data_offsets": [0, 32]}}, 32, "dtype"),
    ("negative dim", {"w": {"dtype": "F32", "shape": [-4, 4], "data_offsets": [0, 64]}}, 64, "shape"),
    ("float dim", {"w": {"dtype": "F32", "shape": [4.0, 4], "data_offsets": [0, 64]}}, 64, "shape"),
    ("offsets reversed", {"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, 64, "data_offsets"),
    ("entry not an object", {"w": [1, 2]}, 64, "not an object"),
]


@pytest.mark.parametrize("name,header,data_bytes,words", BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
def test_safetensors_headers_are_checked_against_the_file(tmp_path, name, header, data_bytes, words):
    folder = _folder(tmp_path)
    _safetensors(folder / "model.safetensors", header, data_bytes)
    result = CliRunner().invoke(app, ["inspect-arch", str(folder), "--json"])
    assert result.exit_code == 3, (result.stdout, result.stderr)
    _one_error_line(result, words)


def test_a_consistent_header_is_counted(tmp_path):
    folder = _folder(tmp_path)
    _safetensors(folder / "model.safetensors", {"w": GOOD, "__metadata__": {"format": "pt"}}, 64)
    data = json.loads(CliRunner().invoke(app, ["inspect-arch", str(folder), "--json"]).stdout)
    assert (data["num_parameters"], data["param_count_source"]) == (16, "safetensors")


def test_truncated_header(tmp_path):
    folder = _folder(tmp_path)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 1000) + b'{"w": ')
    result = CliRunner().invoke(app, ["inspect-arch", str(folder)])
    assert result.exit_code == 3
    _one_error_line(result, "cut short")
