"""`llmctl inspect-arch MODEL`: layers, heads, attention and MoE layout, exact parameters, memory per dtype."""

from __future__ import annotations

from typing import Any

from llmctl.cli.options import JsonOpt, ModelArg, RevisionOpt, SourceOpt, source_value
from llmctl.cli.output import Output


def inspect_arch(
    model: ModelArg,
    json_output: JsonOpt = False,
    revision: RevisionOpt = None,
    source: SourceOpt = None,
) -> None:
    """Show MODEL's architecture, exact parameter count and memory needs (reads config files and headers only)."""
    from llmctl.core.resolve import resolve_model
    from llmctl.core.spec import load_spec

    src = resolve_model(model, revision=revision, source=source_value(source))
    spec = load_spec(src)
    Output(json_output).emit(arch_report(spec, src), _render)


def arch_report(spec: Any, src: Any = None) -> dict[str, Any]:
    """The inspect-arch data as a plain dict (the --json output)."""
    from llmctl.core.errors import UsageError
    from llmctl.core.estimate import (
        checkpoint_dtype,
        dtype_bytes,
        kv_cache_bytes_per_token,
        kv_cache_note,
        parameter_count,
        safetensors_bytes,
        state_bytes_per_sequence,
        weight_bytes,
    )

    header = src.safetensors_header() if src is not None else None
    info = getattr(src, "gguf_info", None) if src is not None else None
    count = parameter_count(spec, src, header=header)
    weights: dict[str, int] | None = None
    stored_dtype = checkpoint_dtype(spec)
    if count is not None:
        weights = {dtype: weight_bytes(count.total, dtype) for dtype in ("bf16", "fp8", "int4")}
        if header:  # what the safetensors files really hold, scales included
            weights["checkpoint"] = safetensors_bytes(header)
            if stored_dtype is None:
                stored_dtype = _dominant_dtype(header)
        elif info is not None:  # a GGUF file: what its tensors take at its own quantization
            weights["checkpoint"] = sum(int(t.n_bytes) for t in info.tensors)
            stored_dtype = info.file_type or stored_dtype
        elif stored_dtype:
            try:
                weights["checkpoint"] = weight_bytes(count.total, stored_dtype)
            except UsageError:  # an exotic dtype name: the table still has bf16/fp8/int4
                pass
    # the cache a GPU deployment keeps: fp16 for fp16 checkpoints, else bf16 (float32 checkpoints are served in 16 bits)
    kv_dtype = "float16" if spec.torch_dtype == "float16" else "bfloat16"
    moe = spec.moe
    data: dict[str, Any] = {
        "model": src.display if src is not None else spec.architecture,
        "architecture": spec.architecture,
        "architecture_inferred": spec.architecture_inferred,
        "model_type": spec.model_type,
        "family": spec.family,
        "kind": spec.kind,
        "is_moe": spec.is_moe,
        "is_multimodal": spec.is_multimodal,
        "num_parameters": count.total if count else None,
        "num_active_parameters": count.active if count else None,
        "param_count_source": count.source if count else None,
        "param_count_note": count.note if count else None,
        "num_layers": spec.num_layers,
        "num_decoder_layers": spec.num_decoder_layers,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_attention_heads": spec.num_attention_heads,
        "num_kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "attention": spec.attention,
        "mla": None if spec.mla is None else {
            "kv_lora_rank": spec.mla.kv_lora_rank, "q_lora_rank": spec.mla.q_lora_rank,
            "qk_nope_head_dim": spec.mla.qk_nope_head_dim, "qk_rope_head_dim": spec.mla.qk_rope_head_dim,
            "v_head_dim": spec.mla.v_head_dim},
        "position_embedding": spec.position_embedding,
        "rope_type": spec.rope_type,
        "rope_theta": spec.rope_theta,
        "rope_scaling": spec.rope_scaling,
        "partial_rotary_factor": spec.partial_rotary_factor,
        "sliding_window": spec.sliding_window,
        "norm": spec.norm,
        "activation": spec.activation,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "vocab_size": spec.vocab_size,
        "context_length": spec.context_length,
        "torch_dtype": spec.torch_dtype,
        "moe": None if moe is None else {
            "num_experts": moe.num_experts, "experts_per_token": moe.experts_per_token,
            "num_shared_experts": moe.num_shared_experts, "moe_intermediate_size": moe.moe_intermediate_size,
            "num_moe_layers": None if spec.num_layers is None else sum(
                1 for i in range(spec.num_layers) if moe.is_moe_layer(i))},
        "layers": None if spec.layer_plan is None else {
            "kv_cache_layers": spec.layer_plan.kv_layers, "state_layers": dict(spec.layer_plan.state_layers)},
        "pooling": spec.pooling,
        "weight_bytes": weights,
        "checkpoint_dtype": stored_dtype,
        "kv_cache_dtype": kv_dtype,
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(spec, dtype_bytes(kv_dtype)),
        "kv_cache_note": kv_cache_note(spec),
        "state_bytes_per_sequence": state_bytes_per_sequence(spec, dtype_bytes(kv_dtype)),
        "unknown": list(spec.unknown),  # what the config did not give in a form llmctl reads (null above)
        "notes": list(spec.notes),
    }
    return data


def _dominant_dtype(header: dict) -> str:
    """The safetensors dtype holding the most elements (F32 for all-MiniLM-L6-v2)."""
    import math

    totals: dict[str, int] = {}
    for dtype, shape in header.values():
        totals[dtype] = totals.get(dtype, 0) + math.prod(shape)
    return max(totals, key=totals.get)


def _value(value: Any) -> str:
    return "unknown" if value is None else str(value)


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _count(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n:,} ({n / scale:.2f}{unit})"
    return f"{n:,}"


def _render(console: Any, data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=data["model"], show_header=False, box=None, pad_edge=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    row = table.add_row
    row("architecture", data["architecture"] + (" (inferred from model_type)" if data["architecture_inferred"] else ""))
    row("family / kind", f"{data['family']} / {data['kind']}" + (" / multimodal" if data["is_multimodal"] else ""))
    layers = _value(data["num_layers"])
    if data["num_decoder_layers"]:
        layers += f" encoder + {data['num_decoder_layers']} decoder"
    row("layers", layers)
    row("hidden / intermediate", f"{_value(data['hidden_size'])} / {data['intermediate_size'] or '-'}")
    if data["attention"] == "none":
        row("attention", "none (attention-free)")
    else:
        row("attention", f"{_value(data['attention'])}: {_value(data['num_attention_heads'])} heads, "
                         f"{_value(data['num_kv_heads'])} KV heads, head dim {_value(data['head_dim'])}")
    if data["layers"]:
        state = ", ".join(f"{n} {kind}" for kind, n in data["layers"]["state_layers"].items()) or "none"
        row("layer types", f"{data['layers']['kv_cache_layers']} with a KV cache; state layers: {state}")
    if data["mla"]:
        mla = data["mla"]
        row("MLA", f"kv_lora_rank {mla['kv_lora_rank']}, q_lora_rank {mla['q_lora_rank']}, "
                   f"rope dim {mla['qk_rope_head_dim']}, v dim {mla['v_head_dim']}")
    position = data["position_embedding"]
    if position == "rope":
        position = f"rope {data['rope_type']}, theta {data['rope_theta']:g}"
        if data["partial_rotary_factor"] != 1.0:
            position += f", rotary fraction {data['partial_rotary_factor']:g}"
        if data["rope_scaling"]:
            position += f", scaling {data['rope_scaling']}"
    row("positions", position)
    row("sliding window", str(data["sliding_window"] or "none"))
    row("norm / activation", f"{data['norm']} / {data['activation'] or '-'}")
    row("tied embeddings", "yes" if data["tie_word_embeddings"] else "no")
    vocab = "unknown" if data["vocab_size"] is None else f"{data['vocab_size']:,}"
    row("vocab / context", f"{vocab} / {data['context_length'] or '-'}")
    if data["moe"]:
        moe = data["moe"]
        row("MoE", f"{moe['num_experts']} experts, {_value(moe['experts_per_token'])} per token, "
                   f"{moe['num_shared_experts']} shared, {_value(moe['num_moe_layers'])} MoE layers")
    if data["pooling"]:
        row("pooling", data["pooling"])
    row("parameters", _count(data["num_parameters"]) + (f"  [dim]from {data['param_count_source']}[/]"
                                                        if data["param_count_source"] else ""))
    if data["is_moe"]:
        row("active parameters", _count(data["num_active_parameters"]))
    if data["param_count_note"]:
        row("", f"[dim]{data['param_count_note']}[/]")
    weights = data["weight_bytes"] or {}
    if "checkpoint" in weights:
        row(f"weights ({data['checkpoint_dtype']})", _size(weights["checkpoint"]))
    for dtype in ("bf16", "fp8", "int4"):
        if dtype in weights:
            row(f"weights at {dtype}", _size(weights[dtype]))
    kv = f"{_size(data['kv_cache_bytes_per_token'])} ({data['kv_cache_dtype']})"
    row("KV cache per token", kv + (f"  [dim]{data['kv_cache_note']}[/]" if data["kv_cache_note"] else ""))
    if data["state_bytes_per_sequence"] != 0:
        row("state per sequence", _size(data["state_bytes_per_sequence"]))
    if data["unknown"]:
        row("unknown", ", ".join(data["unknown"]))
    console.print(table)
    for note in data["notes"]:
        console.print(f"  [dim]• {note}[/]")
