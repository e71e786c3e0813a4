"""iter_gguf_weights: HF names, undone q/k permutation and dequantised values, on tiny files and the real SmolLM2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmctl.core.engine.gguf_loader import gguf_hf_config, gguf_to_hf_name, iter_gguf_weights
from llmctl.core.errors import UnsupportedModelError


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_0"])
def test_tiny_checkpoint_round_trip(tmp_path: Path, tiny_gguf, arch: str, qtype: str) -> None:
    path = tmp_path / f"{arch}-{qtype}.gguf"
    # 6 heads over 2 kv heads, head_dim 32: the row permutation is not its own inverse at these sizes
    expected = tiny_gguf(path, arch, hidden=192, heads=6, kv_heads=2, layers=2, ffn=64, vocab=33,
                         qtype=qtype, tie=(arch != "qwen2"), qkv_bias=(arch == "qwen2"))
    got = dict(iter_gguf_weights(path))
    assert set(got) == set(expected)
    for name, tensor in got.items():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous()
        # exact: same stored bytes and float32 arithmetic; the permutation only moves rows
        torch.testing.assert_close(tensor, torch.from_numpy(np.ascontiguousarray(expected[name])),
                                   rtol=1e-6, atol=1e-6, msg=name)


def test_permutation_is_undone_for_llama_only(tmp_path: Path, tiny_gguf) -> None:
    # the same random weights stored as llama (permuted by the converter) and as qwen2 (not permuted)
    llama = tiny_gguf(tmp_path / "l.gguf", "llama", hidden=128, heads=4, kv_heads=2, layers=1, seed=7)
    qwen = tiny_gguf(tmp_path / "q.gguf", "qwen2", hidden=128, heads=4, kv_heads=2, layers=1, seed=7)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        np.testing.assert_array_equal(llama[name], qwen[name])
    ours_llama, ours_qwen = dict(iter_gguf_weights(tmp_path / "l.gguf")), dict(iter_gguf_weights(tmp_path / "q.gguf"))
    for name in llama:
        assert torch.equal(ours_llama[name], ours_qwen[name]), name


def test_dtype_and_config(tmp_path: Path, tiny_gguf) -> None:
    path = tmp_path / "t.gguf"
    expected = tiny_gguf(path, "llama", qtype="Q8_0")
    for name, tensor in iter_gguf_weights(path, dtype=torch.bfloat16):
        assert tensor.dtype == torch.bfloat16
        torch.testing.assert_close(tensor, torch.from_numpy(expected[name]).to(torch.bfloat16))
    cfg = gguf_hf_config(path)
    cfg["hidden_size"] = -1  # a copy: the cached header must not change
    assert gguf_hf_config(path)["hidden_size"] == 64


def test_name_mapping() -> None:
    assert gguf_to_hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf_to_hf_name("output_norm.weight") == "model.norm.weight"
    assert gguf_to_hf_name("output.weight") == "lm_head.weight"
    assert gguf_to_hf_name("blk.12.attn_q.bias") == "model.layers.12.self_attn.q_proj.bias"
    assert gguf_to_hf_name("blk.3.ffn_gate.weight") == "model.layers.3.mlp.gate_proj.weight"
    assert gguf_to_hf_name("blk.0.attn_k_norm.weight") == "model.layers.0.self_attn.k_norm.weight"
    assert gguf_to_hf_name("rope_freqs.weight") is None
    with pytest.raises(UnsupportedModelError, match="ffn_gate_exps"):
        gguf_to_hf_name("blk.0.ffn_gate_exps.weight")


@pytest.fixture(scope="module")
def transformers_state_dict(smollm2_gguf: Path, transformers_config: dict) -> dict[str, np.ndarray]:
    """The HF state dict for the file built from references only: transformers' config, model keys, header
    reader (offsets) and q/k reverse permutation; gguf-py's HF->GGUF name map and numpy dequantisation."""
    from gguf import MODEL_ARCH, GGMLQuantizationType, get_tensor_name_map, quants
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.integrations.gguf import GgufHeader, load_gguf_state_dict
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS

    config = dict(transformers_config)
    config.pop("model_type", None)
    config.pop("_model_name_or_path", None)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config))
    processor = TENSOR_PROCESSORS["llama"](config=transformers_config)
    # the converter's own table (what transformers' get_gguf_hf_weights_map uses, minus its slow recursion)
    name_map = get_tensor_name_map(MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    names = {}
    for hf_name in model.state_dict():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = name_map.get_name(base)
        if gguf_name is not None:
            names[f"{gguf_name}.{suffix}"] = hf_name
    header = GgufHeader.from_file(str(smollm2_gguf))
    lazy = load_gguf_state_dict(header)
    out = {}
    for info in header.tensors:
        raw = np.asarray(lazy[info.name].data)
        if info.ggml_type in (0, 1):  # F32 / F16: the bytes are the values
            values = raw.view(np.float32 if info.ggml_type == 0 else np.float16).reshape(info.shape).astype(np.float32)
        else:
            raw = raw.reshape(lazy[info.name].shape)  # (rows, row bytes)
            values = quants.dequantize(raw, GGMLQuantizationType(info.ggml_type))
        values = processor.process(weights=values, name=info.name).weights
        out[names[info.name]] = values  # KeyError here: a GGUF tensor HF has no name for
    return out


@pytest.mark.slow
def test_smollm2_weights_match_transformers(smollm2_gguf: Path, transformers_state_dict: dict) -> None:
    seen = set()
    for name, tensor in iter_gguf_weights(smollm2_gguf):
        assert name in transformers_state_dict, name
        expected = torch.from_numpy(np.ascontiguousarray(transformers_state_dict[name]))
        assert tensor.shape == expected.shape, name
        # same float32 arithmetic up to operation order (assert_close is too slow for 135M values on 2 cores)
        assert float((tensor - expected).abs().max()) <= 1e-6 * (1.0 + float(expected.abs().max())), name
        seen.add(name)
    assert seen == set(transformers_state_dict)


def test_unsupported_tensor_type_is_refused_before_loading(tmp_path: Path) -> None:
    from gguf import GGMLQuantizationType, GGUFWriter

    path = tmp_path / "iq.gguf"
    writer = GGUFWriter(str(path), "llama")
    for key, value in (("block_count", 1), ("context_length", 8), ("embedding_length", 256),
                       ("feed_forward_length", 256), ("head_count", 2)):
        getattr(writer, f"add_{key}")(value)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tensor("token_embd.weight", np.zeros((4, 66), dtype=np.uint8), raw_dtype=GGMLQuantizationType.IQ2_XXS)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="IQ2_XXS"):
        next(iter_gguf_weights(path))
