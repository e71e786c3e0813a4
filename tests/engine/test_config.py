"""EngineConfig: defaults stated once, options checked once, device/model defaults and the KV cache size resolved."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from llmctl.core.engine.config import EngineConfig
from llmctl.core.engine.kv_cache import KVCacheSpec, size_kv_cache
from llmctl.core.errors import InvalidValueError, UnsupportedModelError, UsageError

SIZES = ("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_memory", "num_kv_blocks")
# 512 bytes a token: 2 layers x K,V x 2 heads x 16 dims x 4 bytes.
SPEC = KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=16, dtype=torch.float32)


def test_defaults():
    config = EngineConfig("m")
    assert (config.block_size, config.gpu_memory_utilization, config.seed, config.device, config.dtype) == (
        16, 0.9, 0, "auto", "auto",
    )  # fmt: skip
    assert (config.task, config.model_impl, config.load_format, config.tensor_parallel_size) == (
        "generate", "auto", "auto", 1,
    )  # fmt: skip
    for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "kv_cache_memory", "num_kv_blocks",
                 "padded_decode", "async_scheduling", "quantization", "tokenizer", "revision"):  # fmt: skip
        assert getattr(config, name) is None, name
    assert not config.enforce_eager and not config.trust_remote_code and not config.shrink_max_model_len


def test_frozen_with_slots():
    config = EngineConfig("m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.block_size = 8
    assert not hasattr(config, "__dict__")


def test_from_options_refuses_unknown_names_and_drops_vllm_no_ops():
    with pytest.raises(UsageError, match="unknown LLM option.*bogus, colour"):
        EngineConfig.from_options("m", colour="red", bogus=1, block_size=8)
    with pytest.raises(UsageError, match="shrink_max_model_len"):  # set by resolve(), not by a user
        EngineConfig.from_options("m", shrink_max_model_len=True)
    config = EngineConfig.from_options("m", swap_space=4, enable_prefix_caching=True, tokenizer_mode="auto", seed=3)
    assert config == EngineConfig("m", seed=3)


@pytest.mark.parametrize("name", SIZES)
@pytest.mark.parametrize("bad", [0, -1, 2.5, math.nan, math.inf, "8", True])
def test_sizes_are_positive_integers(name, bad):
    with pytest.raises(InvalidValueError, match=f"{name} must be a positive integer"):
        EngineConfig("m", **{name: bad})


def test_integral_floats_become_ints():
    config = EngineConfig("m", kv_cache_memory=1e9, max_num_seqs=4.0)
    assert config.kv_cache_memory == 10**9 and type(config.kv_cache_memory) is int
    assert config.max_num_seqs == 4 and type(config.max_num_seqs) is int


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"max_model_len": 0}, InvalidValueError, "max_model_len must be a positive integer"),
        ({"max_model_len": 2.0}, InvalidValueError, "max_model_len must be a positive integer"),
        ({"seed": 1.5}, InvalidValueError, "seed must be an integer"),
        ({"seed": 1 << 64}, InvalidValueError, "seed must be between"),
        ({"gpu_memory_utilization": 0}, UsageError, r"gpu_memory_utilization must be in \(0, 1\]"),
        ({"gpu_memory_utilization": 1.01}, UsageError, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": math.nan}, UsageError, "gpu_memory_utilization"),
        ({"task": "classify"}, UnsupportedModelError, "task='classify' is not available"),
        ({"model_impl": "jax"}, UnsupportedModelError, "model_impl='jax' is not available"),
        ({"quantization": "awq"}, UnsupportedModelError, "quantization='awq' is not supported"),
        ({"tensor_parallel_size": 2}, UsageError, "tensor_parallel_size must be 1"),
        ({"device": "tpu"}, InvalidValueError, "unknown device 'tpu'"),
        ({"device": "cpu:1"}, InvalidValueError, "unknown device"),
    ],
)
def test_validation_errors(options, error, message):
    with pytest.raises(error, match=message):
        EngineConfig("m", **options)


def test_accepted_values():
    EngineConfig("m", gpu_memory_utilization=1.0, seed=None, task="embedding", model_impl="transformers",
                 quantization="gguf", device=torch.device("cpu"), max_model_len=1)  # fmt: skip


def test_resolve_on_cpu():
    config = EngineConfig("m", device="cpu").resolve(max_positions=128)
    assert config.device == torch.device("cpu")
    assert (config.max_num_seqs, config.max_num_batched_tokens, config.max_model_len) == (256, 2048, 128)
    assert config.shrink_max_model_len  # not given: the model's length, lowered to what the cache holds
    assert config.padded_decode is False and config.async_scheduling is False
    assert config.resolve(max_positions=128) == config  # idempotent
    assert EngineConfig("m", device="cpu").resolve().max_model_len == 2048  # a model that states no length


def test_resolve_keeps_what_was_given():
    config = EngineConfig("m", device="cpu", max_model_len=64, max_num_seqs=4096, padded_decode=True)
    resolved = config.resolve(max_positions=128)
    assert resolved.max_model_len == 64 and not resolved.shrink_max_model_len
    assert resolved.max_num_batched_tokens == 4096  # at least one token per sequence
    assert resolved.async_scheduling is True  # follows padded_decode
    given = EngineConfig("m", device="cpu", max_num_batched_tokens=100, async_scheduling=False, padded_decode=True)
    assert given.resolve().max_num_batched_tokens == 100 and given.resolve().async_scheduling is False


def test_resolve_errors():
    with pytest.raises(UsageError, match="max_model_len=129 is more than the model's 128 positions"):
        EngineConfig("m", device="cpu", max_model_len=129).resolve(max_positions=128)
    with pytest.raises(UsageError, match="async_scheduling needs padded decode"):
        EngineConfig("m", device="cpu", async_scheduling=True).resolve()


def test_resolve_on_a_large_cuda_card(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 << 30))
    config = EngineConfig("m").resolve(max_positions=4096)
    assert config.device == torch.device("cuda")
    assert (config.max_num_seqs, config.max_num_batched_tokens) == (512, 8192)
    assert config.padded_decode is True and config.async_scheduling is True


def test_size_kv_cache_from_a_byte_budget():
    config = EngineConfig("m", device="cpu", max_model_len=4, block_size=2, kv_cache_memory=4096).resolve()
    sized = size_kv_cache(None, SPEC, config)
    assert sized.num_kv_blocks == 4 and sized.max_model_len == 4  # 4096 bytes / (2 tokens x 512 bytes)
    capped = dataclasses.replace(config, max_num_seqs=1, kv_cache_memory=None)  # 1 GiB, capped at one sequence
    assert size_kv_cache(None, SPEC, capped).num_kv_blocks == 2
    fixed = dataclasses.replace(config, num_kv_blocks=7)
    assert size_kv_cache(None, SPEC, fixed) == fixed


def test_size_kv_cache_lowers_max_model_len_only_when_it_was_not_given():
    small = EngineConfig("m", device="cpu", block_size=2, kv_cache_memory=2048)
    with pytest.warns(UserWarning, match="max_model_len lowered from 128 to 4"):
        sized = size_kv_cache(None, SPEC, small.resolve(max_positions=128))
    assert (sized.num_kv_blocks, sized.max_model_len) == (2, 4)
    with pytest.raises(UsageError, match="the KV cache holds 4 tokens, fewer than max_model_len=128"):
        size_kv_cache(None, SPEC, dataclasses.replace(small, max_model_len=128).resolve(max_positions=128))
    with pytest.raises(UsageError, match="holds 0 tokens"):  # not even one block: nothing to shrink to
        size_kv_cache(None, SPEC, dataclasses.replace(small, kv_cache_memory=100).resolve(max_positions=128))


def test_llm_builds_one_config_for_the_whole_engine(tiny_llama_dir):
    from llmctl.core.engine.llm import LLM

    llm = LLM(str(tiny_llama_dir), device="cpu", max_num_seqs=3.0, block_size=4, num_kv_blocks=64, swap_space=4)
    engine = llm.llm_engine
    assert llm.config is engine.config and engine.scheduler.config is engine.config
    assert (llm.config.max_num_seqs, llm.config.block_size, llm.config.num_kv_blocks) == (3, 4, 64)
    assert llm.config.max_num_batched_tokens == 2048 and llm.config.device == torch.device("cpu")
    assert engine.runner.block_size == 4 and engine.runner.decode is None and engine.block_manager.num_blocks == 64
    assert llm.max_model_len == llm.config.max_model_len == llm.hf_config.max_position_embeddings


def test_engine_needs_a_resolved_config():
    from llmctl.core.engine.engine import LLMEngine

    with pytest.raises(ValueError, match="resolved EngineConfig"):
        LLMEngine(torch.nn.Linear(1, 1), SPEC, EngineConfig("m", device="cpu"))
