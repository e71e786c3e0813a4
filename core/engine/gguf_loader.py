"""Stream a GGUF checkpoint as (HF checkpoint name, dequantised tensor) pairs, plus its HF config and tokenizer."""

from __future__ import annotations

import contextlib
import mmap
import os
import re
from typing import Any, Iterator

import torch

from llmctl.core.engine.gguf_dequant import SUPPORTED_TYPES, dequantize
from llmctl.core.engine.gguf_tokenizer import build_gguf_tokenizer, load_gguf_tokenizer
from llmctl.core.errors import ModelReadError, UnsupportedModelError
from llmctl.core.gguf_meta import GGUFInfo, read_gguf

__all__ = [
    "SUPPORTED_TYPES",
    "build_gguf_tokenizer",
    "dequantize",
    "gguf_hf_config",
    "gguf_to_hf_name",
    "iter_gguf_weights",
    "load_gguf_tokenizer",
]

# llama.cpp tensor names -> HF checkpoint names, shared by the llama family (llama, mistral, qwen2, qwen3)
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# llama.cpp-only tensors with no HF checkpoint counterpart (llama3's rope frequencies are derived from config)
_SKIPPED = {"rope_freqs.weight"}
# architectures whose converter interleaves q/k rows for llama.cpp's rotary layout (convert_hf_to_gguf's LlamaModel)
_PERMUTED_ARCHS = {"llama", "mistral"}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def gguf_to_hf_name(gguf_name: str) -> str | None:
    """The HF checkpoint key for a llama.cpp tensor name; None for tensors HF checkpoints do not have."""
    if gguf_name in _SKIPPED:
        return None
    if match := _BLOCK_RE.fullmatch(gguf_name):
        layer, part, kind = match.groups()
        if part in _BLOCK_NAMES:
            return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
    else:
        base, _, kind = gguf_name.rpartition(".")
        if base in _GLOBAL_NAMES and kind in ("weight", "bias"):
            return f"{_GLOBAL_NAMES[base]}.{kind}"
    raise UnsupportedModelError(f"GGUF tensor {gguf_name!r} has no known HF checkpoint name")


def gguf_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """The HF config.json dict that the GGUF file's metadata describes (a copy; safe to modify)."""
    return dict(read_gguf(path).hf_config)


def _unpermute_rows(raw: torch.Tensor, n_rows: int, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row interleave on raw bytes: GGUF (head, half, 2) row order -> HF (head, 2, half).

    Each row is whole blocks, so rows can be reordered before dequantisation (fewer bytes to move)."""
    if n_rows % (2 * n_head):
        raise ModelReadError(f"cannot un-permute {n_rows} rows over {n_head} heads")
    rows = raw.reshape(n_rows, -1)  # (rows, row_bytes)
    half = n_rows // n_head // 2
    return rows.reshape(n_head, half, 2, -1).transpose(1, 2).reshape(-1)


@contextlib.contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """Run CPU dequantisation on one intra-op thread: its ops are small and memory-bound, and on a busy
    2-core box OpenMP's barriers made them 3-10x slower with 2 threads (measured on SmolLM2 Q4_1)."""
    previous = torch.get_num_threads()
    if device.type != "cpu" or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _file_map(path: str) -> mmap.mmap:
    with open(path, "rb") as fh:
        # copy-on-write: torch.frombuffer wants a writable buffer; nothing is ever written through it
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)


def iter_gguf_weights(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    info: GGUFInfo | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF checkpoint name, tensor in `dtype` on `device`) for every weight of a GGUF file.

    Raw blocks are read through a file map, moved to `device` and dequantised there; q_proj/k_proj rows are
    put back in HF order for llama-arch files. Tensors own their memory (never views of the file)."""
    path = os.fspath(path)
    info = info or read_gguf(path)
    config = info.hf_config
    permute = info.architecture in _PERMUTED_ARCHS
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    unsupported = sorted({t.ggml_type for t in info.tensors} - set(SUPPORTED_TYPES))
    if unsupported:
        raise UnsupportedModelError(
            f"{path}: GGUF tensor types {', '.join(unsupported)} are not supported; "
            f"supported: {', '.join(SUPPORTED_TYPES)}"
        )
    names = [(tensor, gguf_to_hf_name(tensor.name)) for tensor in info.tensors]  # unknown names fail up front
    buf = _file_map(path)
    for tensor, hf_name in names:
        if hf_name is None:
            continue
        raw = torch.frombuffer(buf, dtype=torch.uint8, count=tensor.n_bytes, offset=info.data_offsets[tensor.name])
        kind = tensor.name.split(".")[2] if tensor.name.startswith("blk.") else ""
        if permute and kind in heads:
            raw = _unpermute_rows(raw, tensor.shape[0], heads[kind])
        raw = raw.to(device)
        with _single_thread(raw.device):
            weight = dequantize(raw, tensor.ggml_type, tensor.shape, dtype)
        del raw
        yield hf_name, weight
