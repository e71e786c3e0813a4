"""GGUF metadata without torch: the key/value header, the tensor table, and the HF config it implies."""

from __future__ import annotations

import functools
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from llmctl.core.errors import ModelReadError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # llama.cpp's default when general.alignment is absent

# ggml type id -> (name, elements per block, bytes per block); from ggml.h / gguf-py constants.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}
GGML_TYPE_IDS = {name: type_id for type_id, (name, _, _) in GGML_TYPES.items()}

# general.file_type -> llama.cpp's LlamaFileType name
FILE_TYPES = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0",
    9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K",
    19: "MOSTLY_IQ2_XXS", 20: "MOSTLY_IQ2_XS", 21: "MOSTLY_Q2_K_S", 22: "MOSTLY_IQ3_XS", 23: "MOSTLY_IQ3_XXS",
    24: "MOSTLY_IQ1_S", 25: "MOSTLY_IQ4_NL", 26: "MOSTLY_IQ3_S", 27: "MOSTLY_IQ3_M", 28: "MOSTLY_IQ2_S",
    29: "MOSTLY_IQ2_M", 30: "MOSTLY_IQ4_XS", 31: "MOSTLY_IQ1_M", 32: "MOSTLY_BF16", 36: "MOSTLY_TQ1_0",
    37: "MOSTLY_TQ2_0", 38: "MOSTLY_MXFP4_MOE",
}

# llama.cpp general.architecture -> (HF architectures entry, HF model_type)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}

# scalar value types: id -> struct format; 8 (string) and 9 (array) are handled apart
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class ArrayRef(NamedTuple):
    """A metadata array left unread: where it starts and how many items it holds."""

    item_type: int
    count: int
    offset: int  # of the first item


class GGUFTensorInfo(NamedTuple):
    """One row of the tensor table; `shape` is in HF (torch) order, i.e. GGUF's dims reversed."""

    name: str
    ggml_type: str
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFInfo:
    """What `read_gguf` learns from a file's header: enough for check/inspect and for loading."""

    path: str
    architecture: str
    name: str | None
    file_type: str | None
    hf_config: dict[str, Any] = field(hash=False)
    tensors: list[GGUFTensorInfo] = field(hash=False)
    chat_template: str | None
    tokenizer_model: str | None
    metadata: dict[str, Any] = field(hash=False, repr=False)  # raw key/values; big arrays as ArrayRef
    data_offsets: dict[str, int] = field(hash=False, repr=False)  # tensor name -> absolute byte offset

    @property
    def tensor_types(self) -> dict[str, int]:
        """Count of tensors per ggml type name, e.g. {"Q4_1": 210, "F32": 61}."""
        counts: dict[str, int] = {}
        for info in self.tensors:
            counts[info.ggml_type] = counts.get(info.ggml_type, 0) + 1
        return counts


class _Cursor:
    """Sequential little-endian reads over a mapped buffer; running off its end raises ModelReadError."""

    def __init__(self, buf: mmap.mmap | bytes, path: str):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def _need(self, n: int) -> None:
        if self.pos + n > self.size:
            raise ModelReadError(f"{self.path}: truncated GGUF file (header ends early at byte {self.pos})")

    def u32(self) -> int:
        self._need(4)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return value

    def u64(self) -> int:
        self._need(8)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return value

    def string(self) -> str:
        n = self.u64()
        self._need(n)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def strings(self, count: int, decode: bool = True) -> list[str]:
        """`count` strings in a row (the hot loop for 50k-token vocabularies); [] when decode is False."""
        out: list[str] = []
        append, unpack, buf, pos = out.append, _U64.unpack_from, self.buf, self.pos
        try:
            for _ in range(count):
                (n,) = unpack(buf, pos)
                pos += 8
                if decode:
                    append(buf[pos : pos + n].decode("utf-8", errors="replace"))
                pos += n
        except struct.error:
            pos = self.size + 1
        self.pos = pos
        self._need(0)
        return out

    def value(self, value_type: int, keep_arrays: Iterable[str], key: str) -> Any:
        if value_type == _STRING:
            return self.string()
        if value_type in _SCALAR:
            fmt = _SCALAR[value_type]
            width = struct.calcsize(fmt)
            self._need(width)
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
            self.pos += width
            return value
        if value_type == _ARRAY:
            item_type, count = self.u32(), self.u64()
            if item_type in _SCALAR:
                width = struct.calcsize(_SCALAR[item_type])
                self._need(width * count)
                ref = ArrayRef(item_type, count, self.pos)
                self.pos += width * count
                if count <= 64 or key in keep_arrays:
                    return list(struct.unpack_from(f"<{count}{_SCALAR[item_type][1]}", self.buf, ref.offset))
                return ref
            if item_type == _STRING:
                ref = ArrayRef(item_type, count, self.pos)
                keep = count <= 64 or key in keep_arrays
                values = self.strings(count, decode=keep)
                return values if keep else ref
            if item_type == _ARRAY:
                return [self.value(_ARRAY, (), key) for _ in range(count)]
        raise ModelReadError(f"{self.path}: unknown GGUF value type {value_type} for key {key!r}")


def _open_map(path: str) -> mmap.mmap:
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise ModelReadError(f"{path}: empty file, not a GGUF model")
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise ModelReadError(f"{path}: cannot open GGUF file ({exc.strerror or exc})") from exc


def read_gguf_header(
    path: str | os.PathLike, keep_arrays: Iterable[str] = ()
) -> tuple[dict, list[GGUFTensorInfo], dict[str, int]]:
    """(metadata, tensor table, absolute data offset per tensor).

    Arrays of more than 64 items stay ArrayRefs unless their key is in keep_arrays (vocabularies are big)."""
    path = os.fspath(path)
    keep = frozenset(keep_arrays)
    buf = _open_map(path)
    try:
        cur = _Cursor(buf, path)
        cur._need(4)
        if buf[0:4] != GGUF_MAGIC:
            raise ModelReadError(f"{path}: not a GGUF file (magic {bytes(buf[0:4])!r}, expected b'GGUF')")
        cur.pos = 4
        version = cur.u32()
        if version not in (2, 3):
            detail = "big-endian files are not supported" if version > 0xFFFF else "only versions 2 and 3 are"
            raise ModelReadError(f"{path}: unsupported GGUF version {version} ({detail})")
        n_tensors, n_kv = cur.u64(), cur.u64()
        if n_tensors > 1 << 24 or n_kv > 1 << 24:
            raise ModelReadError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.u32(), keep, key)
        raw_tensors = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.u32()
            if n_dims > 8:
                raise ModelReadError(f"{path}: corrupt tensor table ({name!r} has {n_dims} dims)")
            dims = [cur.u64() for _ in range(n_dims)]
            raw_tensors.append((name, dims, cur.u32(), cur.u64()))
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
        data_start = (cur.pos + alignment - 1) // alignment * alignment
        tensors = [_tensor_info(path, *raw) for raw in raw_tensors]
        offsets = {raw[0]: data_start + raw[3] for raw in raw_tensors}
        end = max((offsets[t.name] + t.n_bytes for t in tensors), default=data_start)
        if end > len(buf):
            raise ModelReadError(f"{path}: truncated GGUF file ({len(buf)} bytes, tensor data needs {end})")
        return metadata, tensors, offsets
    finally:
        buf.close()


def read_string_array(path: str | os.PathLike, ref: ArrayRef) -> list[str]:
    """Decode a string array that read_gguf_header left as an ArrayRef."""
    path = os.fspath(path)
    buf = _open_map(path)
    try:
        cur = _Cursor(buf, path)
        cur.pos = ref.offset
        return cur.strings(ref.count)
    finally:
        buf.close()


def _tensor_info(path: str, name: str, dims: list[int], type_id: int, offset: int) -> GGUFTensorInfo:
    if type_id not in GGML_TYPES:
        raise ModelReadError(f"{path}: tensor {name!r} has unknown ggml type {type_id}")
    type_name, block, block_bytes = GGML_TYPES[type_id]
    n_elements = 1
    for dim in dims:
        n_elements *= dim
    if dims and dims[0] % block:
        raise ModelReadError(f"{path}: tensor {name!r} row of {dims[0]} is not a whole number of {type_name} blocks")
    return GGUFTensorInfo(name, type_name, tuple(reversed(dims)), n_elements, n_elements // block * block_bytes)


def _f32(value: float) -> float:
    """A float32 metadata value at its shortest round-trip spelling (9.99999974738e-06 -> 1e-05)."""
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == struct.unpack("<f", struct.pack("<f", value))[0]:
            return short
    return float(value)


def _count(value: Any) -> int:
    return value.count if isinstance(value, ArrayRef) else len(value)


def _torch_dtype(tensors: list[GGUFTensorInfo]) -> str:
    """The float type the file's unquantized weights use: BF16/F16 if present, else float32."""
    types = {t.ggml_type for t in tensors}
    if "BF16" in types:
        return "bfloat16"
    if "F16" in types:
        return "float16"
    return "float32"


def _rope_scaling(meta: dict, arch: str) -> dict | None:
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or factor is None:
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": _f32(factor)}
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    if original:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def build_hf_config(path: str, meta: dict, tensors: list[GGUFTensorInfo]) -> dict[str, Any]:
    """The config.json dict the original HF checkpoint of this file would have had."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelReadError(
            f"{path}: unsupported GGUF architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    hf_arch, model_type = ARCHITECTURES[arch]

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise ModelReadError(f"{path}: GGUF metadata lacks {arch}.{name}")
        return value

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
    names = {t.name for t in tensors}
    vocab = meta.get(f"{arch}.vocab_size")
    if vocab is None and "tokenizer.ggml.tokens" in meta:
        vocab = _count(meta["tokenizer.ggml.tokens"])
    if vocab is None:
        embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
        vocab = embd.shape[0] if embd else None
    config: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        # attention.key_length is the head width when it differs from hidden/heads (Qwen3)
        "head_dim": int(meta.get(f"{arch}.attention.key_length", hidden // heads)),
        "rms_norm_eps": _f32(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": _f32(key("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(meta, arch),
        "max_position_embeddings": int(key("context_length")),
        "vocab_size": int(vocab) if vocab is not None else None,
        # llama.cpp writes output.weight only when the head is not the embedding matrix
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
        "torch_dtype": _torch_dtype(tensors),
    }
    if model_type in ("llama", "qwen3"):
        config["attention_bias"] = "blk.0.attn_q.bias" in names
    if model_type == "llama":
        config["mlp_bias"] = "blk.0.ffn_up.bias" in names
    if meta.get(f"{arch}.attention.sliding_window") and model_type in ("mistral", "qwen2", "qwen3"):
        config["sliding_window"] = int(meta[f"{arch}.attention.sliding_window"])
    return config


@functools.lru_cache(maxsize=8)
def _cached_header(path: str, size: int, mtime_ns: int) -> tuple[dict, list[GGUFTensorInfo], dict[str, int]]:
    """read_gguf_header, once per file version: check, the loader and the tokenizer all read the same header."""
    return read_gguf_header(path)


def read_gguf(path: str | os.PathLike) -> GGUFInfo:
    """Read a GGUF file's header (never its tensor data) into a GGUFInfo; ModelReadError when it can't."""
    path = os.fspath(path)
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise ModelReadError(f"{path}: cannot open GGUF file ({exc.strerror or exc})") from exc
    meta, tensors, offsets = _cached_header(path, stat.st_size, stat.st_mtime_ns)
    meta, tensors, offsets = dict(meta), list(tensors), dict(offsets)  # callers may modify their copies
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelReadError(f"{path}: GGUF metadata lacks general.architecture")
    file_type = meta.get("general.file_type")
    return GGUFInfo(
        path=path,
        architecture=arch,
        name=meta.get("general.name"),
        file_type=FILE_TYPES.get(file_type, f"UNKNOWN_{file_type}") if file_type is not None else None,
        hf_config=build_hf_config(path, meta, tensors),
        tensors=tensors,
        chat_template=meta.get("tokenizer.chat_template"),
        tokenizer_model=meta.get("tokenizer.ggml.model"),
        metadata=meta,
        data_offsets=offsets,
    )


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether the file starts with the GGUF magic (cheap: reads 4 bytes)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False
