"""Saved checkpoints rewritten into the hub layouts of families whose repos ship their own code (loaded by path).

transformers has no class for InternLM / InternLM2 / ChatGLM, so their strict reference is the Llama (ChatGLM: Glm)
checkpoint the rewritten one came from: the same function under the names, packing and config.json the hub repos use.
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
# As THUDM/glm-4-9b and chatglm2-6b have it.
_CHATGLM_AUTO_MAP = {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}
_CHATGLM_NAMES = {  # Glm's names -> modeling_chatglm.py's
    "model.embed_tokens.": "transformer.embedding.word_embeddings.", "model.layers.": "transformer.encoder.layers.",
    "model.norm.": "transformer.encoder.final_layernorm.", "lm_head.": "transformer.output_layer.",
    ".self_attn.o_proj.": ".self_attention.dense.", ".mlp.gate_up_proj.": ".mlp.dense_h_to_4h.",
    ".mlp.down_proj.": ".mlp.dense_4h_to_h.",
}
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


def chatglm_config(glm: dict) -> dict:
    """A saved GlmConfig's config.json -> the ChatGLMConfig keys glm-4-9b's config.json has for the same model."""
    params = glm.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", glm.get("rope_theta", 10000.0)))
    assert float(params.get("partial_rotary_factor", glm.get("partial_rotary_factor", 0.5))) == 0.5, "ChatGLM: half"
    return {
        "architectures": ["ChatGLMModel"], "model_type": "chatglm", "auto_map": _CHATGLM_AUTO_MAP,
        "num_layers": glm["num_hidden_layers"], "padded_vocab_size": glm["vocab_size"],
        "hidden_size": glm["hidden_size"], "ffn_hidden_size": glm["intermediate_size"],
        "kv_channels": glm["head_dim"], "num_attention_heads": glm["num_attention_heads"],
        "multi_query_attention": True, "multi_query_group_num": glm["num_key_value_heads"],
        "add_qkv_bias": glm["attention_bias"], "add_bias_linear": False, "layernorm_epsilon": glm["rms_norm_eps"],
        "rmsnorm": True, "post_layer_norm": True, "apply_residual_connection_post_layernorm": False,
        "original_rope": True, "rope_ratio": theta / 10000.0, "seq_length": glm["max_position_embeddings"],
        "tie_word_embeddings": False, "torch_dtype": "float32",
    }  # fmt: skip


def _chatglm_state(state: dict, config: dict) -> dict:
    out = {}
    for name, tensor in state.items():
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue  # packed with q
        if ".self_attn.q_proj." in name:
            q, k, v = (state[name.replace(".q_proj.", f".{p}_proj.")] for p in "qkv")
            tensor, name = torch.cat([q, k, v]), name.replace(".self_attn.q_proj.", ".self_attention.query_key_value.")
        for old, new in _CHATGLM_NAMES.items():
            name = name.replace(old, new)
        out[name] = tensor.contiguous()
    # The remote code registers rotary_pos_emb.inv_freq as a persistent buffer: the hub files carry it.
    dim = config["kv_channels"] // 2
    out["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    return out


def rewrite(layout: str, src: Path, dst: Path, hub_keys: dict) -> Path:
    """Write checkpoint `src` (a saved transformers Llama) into `dst` as an `layout` hub repo stores it."""
    config = json.loads((src / "config.json").read_text())
    if layout == "chatglm":
        state = load_file(str(src / "model.safetensors"))
        config = chatglm_config(config)
        return _write(dst, _chatglm_state(state, config), _with_keys(config, hub_keys))
    bias = bool(config.get("attention_bias"))
    for key in _LLAMA_ONLY:
        config.pop(key, None)
    config.update(architectures=[_ARCHITECTURES[layout]], model_type=layout, auto_map=_AUTO_MAP[layout], bias=bias)
    config = _with_keys(config, hub_keys)
    state = load_file(str(src / "model.safetensors"))
    if layout == "internlm2":
        state = _internlm2_state(state, config)
    return _write(dst, state, config)


def _with_keys(config: dict, hub_keys: dict) -> dict:
    for key, value in hub_keys.items():  # None: a key the hub file leaves out (its config class's default applies)
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def _write(dst: Path, state: dict, config: dict) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst
