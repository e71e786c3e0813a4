"""Saved Llama checkpoints rewritten into the hub layouts of families whose repos ship their own code (loaded by path).

transformers has no class for InternLM / InternLM2, so their strict reference is the Llama checkpoint the rewritten
one came from: the same function under the names, packing and config.json the hub repos use.
"""

# No `from __future__ import annotations`: loaded by path (see harness.py).

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# auto_map as internlm/internlm-7b and internlm/internlm2-chat-7b have it (their code is never written here).
_AUTO_MAP = {
    "internlm": {"AutoConfig": "configuration_internlm.InternLMConfig",
                 "AutoModel": "modeling_internlm.InternLMForCausalLM",
                 "AutoModelForCausalLM": "modeling_internlm.InternLMForCausalLM"},
    "internlm2": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                  "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                  "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
}  # fmt: skip
_ARCHITECTURES = {"internlm": "InternLMForCausalLM", "internlm2": "InternLM2ForCausalLM"}
# Llama's config keys the InternLM configs do not have (their bias flag is "bias").
_LLAMA_ONLY = ("attention_bias", "mlp_bias", "head_dim", "pretraining_tp", "layer_types")

_INTERNLM2_NAMES = {  # Llama's module names -> modeling_internlm2.py's
    ".self_attn.o_proj.": ".attention.wo.", ".mlp.gate_proj.": ".feed_forward.w1.",
    ".mlp.up_proj.": ".feed_forward.w3.", ".mlp.down_proj.": ".feed_forward.w2.", ".input_layernorm.": ".attention_norm.",
    ".post_attention_layernorm.": ".ffn_norm.",
}  # fmt: skip


def pack_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """q (nh * hd, ...), k / v (nkv * hd, ...) -> InternLM2's wqkv rows: per kv group its q heads, its k, its v."""
    rest = q.shape[1:]
    groups = q.reshape(num_kv_heads, -1, head_dim, *rest)  # (nkv, q_per_kv, hd, ...)
    k, v = k.reshape(num_kv_heads, 1, head_dim, *rest), v.reshape(num_kv_heads, 1, head_dim, *rest)
    return torch.cat([groups, k, v], dim=1).reshape(-1, *rest)  # (nkv * (q_per_kv + 2) * hd, ...)


def _internlm2_state(state: dict, config: dict) -> dict:
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    head_dim, num_kv_heads = hidden // heads, config.get("num_key_value_heads") or heads
    out = {}
    for name, tensor in state.items():
        if ".self_attn.q_proj." in name:
            k, v = (state[name.replace(".q_proj.", f".{p}_proj.")] for p in "kv")
            wqkv = pack_wqkv(tensor, k, v, num_kv_heads, head_dim)
            out[name.replace(".self_attn.q_proj.", ".attention.wqkv.")] = wqkv
            continue
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue  # packed with q
        for old, new in _INTERNLM2_NAMES.items():
            name = name.replace(old, new)
        name = {"model.embed_tokens.weight": "model.tok_embeddings.weight", "lm_head.weight": "output.weight"}.get(
            name, name
        )
        out[name] = tensor.contiguous()
    return out


def rewrite(layout: str, src: Path, dst: Path, hub_keys: dict) -> Path:
    """Write checkpoint `src` (a saved transformers Llama) into `dst` as an `layout` hub repo stores it."""
    config = json.loads((src / "config.json").read_text())
    bias = bool(config.get("attention_bias"))
    for key in _LLAMA_ONLY:
        config.pop(key, None)
    config.update(architectures=[_ARCHITECTURES[layout]], model_type=layout, auto_map=_AUTO_MAP[layout], bias=bias)
    for key, value in hub_keys.items():  # None: a key the hub file leaves out (its config class's default applies)
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    state = load_file(str(src / "model.safetensors"))
    if layout == "internlm2":
        state = _internlm2_state(state, config)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst
