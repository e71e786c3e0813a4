"""GGUF metadata: read_gguf on the real SmolLM2 file and tiny files, HF config vs transformers, broken files."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.core.errors import ModelReadError
from llmctl.core.gguf_meta import GGUFInfo, is_gguf, read_gguf

CONFIG_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "max_position_embeddings", "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id",
    "pad_token_id", "model_type",
)


@pytest.fixture(scope="module")
def smollm2_info(smollm2_gguf: Path) -> GGUFInfo:
    return read_gguf(smollm2_gguf)


def test_smollm2_info(smollm2_info: GGUFInfo) -> None:
    info = smollm2_info
    assert info.architecture == "llama"
    assert info.file_type == "MOSTLY_Q4_1"
    assert info.tokenizer_model == "gpt2"
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert info.hf_config["architectures"] == ["LlamaForCausalLM"]
    assert len(info.tensors) == 2 + 9 * info.hf_config["num_hidden_layers"]  # embedding, final norm, 9 per layer
    names = {t.name for t in info.tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    assert info.hf_config["tie_word_embeddings"] is True
    for name, ggml_type, shape, n_elements, n_bytes in info.tensors:
        assert math.prod(shape) == n_elements and n_bytes > 0
        if name == "token_embd.weight":
            assert shape == (info.hf_config["vocab_size"], info.hf_config["hidden_size"])
        if name.endswith("attn_k.weight"):
            cfg = info.hf_config
            assert shape == (cfg["num_key_value_heads"] * cfg["head_dim"], cfg["hidden_size"])
    assert set(info.tensor_types) <= {"Q4_1", "Q8_0", "F32"}


@pytest.mark.slow
def test_hf_config_matches_transformers(smollm2_info: GGUFInfo, transformers_config: dict) -> None:
    ours, theirs = smollm2_info.hf_config, transformers_config
    for key in CONFIG_FIELDS:
        assert ours[key] == theirs[key], key
    assert math.isclose(ours["rms_norm_eps"], theirs["rms_norm_eps"], rel_tol=1e-6)
    theirs_theta = theirs.get("rope_theta", (theirs.get("rope_parameters") or {}).get("rope_theta"))
    assert math.isclose(ours["rope_theta"], theirs_theta, rel_tol=1e-6)
    assert ours["rope_scaling"] == theirs.get("rope_scaling")


def test_metadata_path_imports_no_torch(smollm2_gguf: Path) -> None:
    code = (
        "import sys; from llmctl.core.gguf_meta import read_gguf; "
        f"info = read_gguf({str(smollm2_gguf)!r}); assert info.hf_config['hidden_size'] > 0; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("arch, hf_arch", [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM"),
                                           ("qwen3", "Qwen3ForCausalLM")])
def test_tiny_file_config(tmp_path: Path, tiny_gguf, arch: str, hf_arch: str) -> None:
    path = tmp_path / f"{arch}.gguf"
    tiny_gguf(path, arch, hidden=64, heads=4, kv_heads=2, layers=3, ffn=96, vocab=40, tie=False)
    info = read_gguf(path)
    cfg = info.hf_config
    assert cfg["architectures"] == [hf_arch] and info.architecture == arch
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (64, 4, 2)
    assert (cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"], cfg["head_dim"]) == (3, 96, 40, 16)
    assert cfg["tie_word_embeddings"] is False
    assert cfg["max_position_embeddings"] == 256 and cfg["rms_norm_eps"] == 1e-6
    assert is_gguf(path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    path = tmp_path / "bert.gguf"
    writer = GGUFWriter(str(path), "bert")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelReadError, match="unsupported GGUF architecture 'bert'"):
        read_gguf(path)


@pytest.mark.parametrize("cut", [3, 20, 5000, -1000])
def test_truncated_file(tmp_path: Path, smollm2_gguf: Path, cut: int) -> None:
    with open(smollm2_gguf, "rb") as fh:
        data = fh.read(cut) if cut > 0 else fh.read()[:cut]
    path = tmp_path / "cut.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelReadError, match="truncated|not a GGUF"):
        read_gguf(path)


GARBAGE = [b"", b"not a gguf file at all, just text\n" * 10, b"GGUF\x09\x00\x00\x00" + bytes(64)]


@pytest.mark.parametrize("content", GARBAGE)
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelReadError) as err:
        read_gguf(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not is_gguf(path) or content.startswith(b"GGUF")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelReadError, match="cannot open"):
        read_gguf(tmp_path / "nope.gguf")
