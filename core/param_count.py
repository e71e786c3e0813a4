"""Exact parameter counts from config, one formula per family, matching transformers' module layout."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from llmctl.core.errors import UnsupportedModelError
from llmctl.core.spec import ModelSpec


@dataclass(frozen=True, slots=True)
class Counts:
    """total parameters; `inactive` = routed-expert parameters a token does not use (None: top-k unknown)."""

    total: int
    inactive: int | None = 0
    note: str | None = None


def _linear(n_in: int, n_out: int, bias: bool = False) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _norm(n: int, with_bias: bool) -> int:
    return 2 * n if with_bias else n


def _mlp(hidden: int, inter: int, *, gated: bool, bias: bool = False) -> int:
    if gated:  # gate_proj + up_proj + down_proj (fused gate_up in Phi-3 / ChatGLM: same count)
        return 2 * _linear(hidden, inter, bias) + _linear(inter, hidden, bias)
    return _linear(hidden, inter, bias) + _linear(inter, hidden, bias)


def _attention(spec: ModelSpec, *, qkv_bias: bool, o_bias: bool) -> int:
    q = spec.num_attention_heads * spec.head_dim
    kv = spec.num_kv_heads * spec.head_dim
    return _linear(spec.hidden_size, q + 2 * kv, qkv_bias) + _linear(q, spec.hidden_size, o_bias)


def _mla_attention(spec: ModelSpec, bias: bool) -> int:
    m, h, nh = spec.mla, spec.hidden_size, spec.num_attention_heads
    qk_dim = m.qk_nope_head_dim + m.qk_rope_head_dim
    if m.q_lora_rank:
        q = _linear(h, m.q_lora_rank, bias) + m.q_lora_rank + _linear(m.q_lora_rank, nh * qk_dim)
    else:
        q = _linear(h, nh * qk_dim)
    kv = (_linear(h, m.kv_lora_rank + m.qk_rope_head_dim, bias) + m.kv_lora_rank
          + _linear(m.kv_lora_rank, nh * (m.qk_nope_head_dim + m.v_head_dim)))
    return q + kv + _linear(nh * m.v_head_dim, h, bias)


def has_lm_head(spec: ModelSpec) -> bool:
    """False for bare backbones (MistralModel, BertModel): they end at the final norm."""
    arch = spec.architecture
    if any(s in arch for s in ("LMHead", "ForCausalLM", "ForConditionalGeneration", "ChatGLM", "ChatModel")):
        return True
    return not arch.endswith("Model")


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where a decoder family puts biases and norms (read from each family's modeling file)."""

    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    gated: bool = True
    norm_bias: bool = False  # LayerNorm (weight + bias) vs RMSNorm (weight)
    norms_per_layer: int = 2
    qk_norm: int = 0  # size of each per-layer q_norm / k_norm (0: none)
    qk_norm_bias: bool = False
    qk_norm_full: bool = False  # OLMo 2: q_norm over all query heads, k_norm over all kv heads
    final_norm: bool = True
    positions: int = 0  # rows of a learned position table
    embed_norm: bool = False  # BLOOM word_embeddings_layernorm
    lm_head_bias: bool = False


def _layout(spec: ModelSpec) -> _Layout:
    c, fam = spec.text_config, spec.text_family
    if fam in ("llama", "yi", "mistral", "mixtral", "baichuan", "phi3", "gemma", "deepseek", "llava", "phi3_v",
               "deepseek_v2", "deepseek_v3", "granite"):
        bias = bool(c.get("attention_bias", False))
        return _Layout(qkv_bias=bias, o_bias=bias, mlp_bias=bool(c.get("mlp_bias", False)))
    if fam in ("qwen2", "qwen2_vl", "qwen2_5_vl", "internvl"):
        return _Layout(qkv_bias=True)
    if fam == "qwen2_moe":
        return _Layout(qkv_bias=bool(c.get("qkv_bias", True)))
    if fam in ("qwen3", "qwen3_moe"):
        bias = bool(c.get("attention_bias", False))
        return _Layout(qkv_bias=bias, o_bias=bias, qk_norm=spec.head_dim)
    if fam == "olmo2":  # no pre-norms: post-attention and post-feed-forward norms
        bias = bool(c.get("attention_bias", False))
        return _Layout(qkv_bias=bias, o_bias=bias, qk_norm_full=True)
    if fam == "qwen":  # Qwen (v1): c_attn always has a bias; c_proj and the MLP follow no_bias
        bias = not c.get("no_bias", True)
        return _Layout(qkv_bias=True, o_bias=bias, mlp_bias=bias)
    if fam == "starcoder2":
        bias = bool(c.get("use_bias", True))
        return _Layout(qkv_bias=bias, o_bias=bias, mlp_bias=bias, gated=False, norm_bias=True)
    if fam == "gemma2":
        return _Layout(norms_per_layer=4)
    if fam == "gemma3_text":  # Gemma 2's four norms per layer, plus q_norm / k_norm over head_dim
        bias = bool(c.get("attention_bias", False))
        return _Layout(qkv_bias=bias, o_bias=bias, norms_per_layer=4, qk_norm=spec.head_dim)
    if fam == "internlm":
        return _Layout(qkv_bias=bool(c.get("bias", True)), o_bias=bool(c.get("bias", True)))
    if fam == "internlm2":
        return _Layout(qkv_bias=bool(c.get("bias", True)), o_bias=bool(c.get("bias", True)))
    if fam in ("glm", "glm4"):  # attention_bias defaults to true, on q/k/v only; GLM-4 adds two sandwich norms
        return _Layout(qkv_bias=bool(c.get("attention_bias", True)), norms_per_layer=4 if fam == "glm4" else 2)
    if fam == "chatglm":
        linear_bias = bool(c.get("add_bias_linear", False))
        return _Layout(qkv_bias=bool(c.get("add_qkv_bias", False)) or linear_bias, o_bias=linear_bias,
                       mlp_bias=linear_bias, norm_bias=not c.get("rmsnorm", True),
                       final_norm=bool(c.get("post_layer_norm", True)))
    if fam == "phi":
        return _Layout(qkv_bias=True, o_bias=True, mlp_bias=True, gated=False, norm_bias=True, norms_per_layer=1,
                       qk_norm=spec.head_dim if c.get("qk_layernorm") else 0, qk_norm_bias=True, lm_head_bias=True)
    if fam == "gpt2":
        return _Layout(qkv_bias=True, o_bias=True, mlp_bias=True, gated=False, norm_bias=True,
                       positions=spec.max_position_embeddings or 0)
    if fam == "gptj":
        return _Layout(mlp_bias=True, gated=False, norm_bias=True, norms_per_layer=1, lm_head_bias=True)
    if fam == "gpt_neox":
        bias = bool(c.get("attention_bias", True))
        return _Layout(qkv_bias=bias, o_bias=bias, mlp_bias=True, gated=False, norm_bias=True)
    if fam == "bloom":
        return _Layout(qkv_bias=True, o_bias=True, mlp_bias=True, gated=False, norm_bias=True, embed_norm=True)
    if fam == "falcon":
        bias = bool(c.get("bias", False))
        if c.get("new_decoder_architecture"):
            norms = int(c.get("num_ln_in_parallel_attn") or 2)
        else:
            norms = 1 if c.get("parallel_attn", True) else 2
        return _Layout(qkv_bias=bias, o_bias=bias, mlp_bias=bias, gated=False, norm_bias=True,
                       norms_per_layer=norms)
    if fam == "mpt":
        bias = not c.get("no_bias", True)
        attn = c.get("attn_config") or {}
        learned = bool(c.get("learned_pos_emb", True)) and not attn.get("alibi", True)
        return _Layout(qkv_bias=bias, o_bias=bias, mlp_bias=bias, gated=False, norm_bias=bias,
                       positions=int(c.get("max_seq_len", 2048)) if learned else 0)
    raise UnsupportedModelError(
        f"no parameter-count formula for {spec.architecture} (family {fam!r})",
        hint="the count is exact when the checkpoint has safetensors files: llmctl then sums their headers",
    )


def _ffn(spec: ModelSpec, lay: _Layout, index: int) -> tuple[int, int | None]:
    """(parameters, inactive parameters) of decoder layer `index`'s feed-forward block."""
    h, c, moe = spec.hidden_size, spec.text_config, spec.moe
    if moe is None or not moe.is_moe_layer(index):
        return _mlp(h, spec.intermediate_size, gated=lay.gated, bias=lay.mlp_bias), 0
    expert = _mlp(h, moe.moe_intermediate_size, gated=True)
    idle = None if moe.experts_per_token is None else (moe.num_experts - moe.experts_per_token) * expert
    total = moe.num_experts * expert + moe.num_experts * h  # experts + router
    if spec.text_family == "deepseek_v3" or c.get("topk_method") == "noaux_tc":
        # DeepSeek-V3's router has e_score_correction_bias: a buffer in transformers, a tensor in the checkpoint,
        # and part of the published 671,026,419,200
        total += moe.num_experts
    if moe.shared_expert_intermediate_size:  # Qwen2-MoE: one shared expert and its sigmoid gate
        total += _mlp(h, moe.shared_expert_intermediate_size, gated=True) + h
    elif moe.num_shared_experts:  # DeepSeek: shared experts fused into one wider MLP
        total += _mlp(h, moe.moe_intermediate_size * moe.num_shared_experts, gated=True)
    return total, idle


def _tied(spec: ModelSpec) -> bool:
    # Gemma3TextConfig ties by default: a gemma3_text config.json without the key has a tied head
    keys = spec.text_config.keys() | spec.config.keys()
    if spec.text_family == "gemma3_text" and "tie_word_embeddings" not in keys:
        return True
    return spec.tie_word_embeddings


def _decoder(spec: ModelSpec) -> Counts:
    lay = _layout(spec)
    h, c, fam = spec.hidden_size, spec.text_config, spec.text_family
    total = spec.vocab_size * h + lay.positions * h + (_norm(h, lay.norm_bias) if lay.embed_norm else 0)
    if spec.mla is not None:
        attn = _mla_attention(spec, bool(c.get("attention_bias", False)))
    else:
        attn = _attention(spec, qkv_bias=lay.qkv_bias, o_bias=lay.o_bias)
    per_layer = attn + lay.norms_per_layer * _norm(h, lay.norm_bias) + 2 * _norm(lay.qk_norm, lay.qk_norm_bias)
    if lay.qk_norm_full:
        per_layer += (spec.num_attention_heads + spec.num_kv_heads) * spec.head_dim
    inactive = 0
    for index in range(spec.num_layers):
        ffn, idle = _ffn(spec, lay, index)
        total += per_layer + ffn
        inactive = None if inactive is None or idle is None else inactive + idle
    total += _norm(h, lay.norm_bias) if lay.final_norm else 0
    note = None
    if has_lm_head(spec):
        if not _tied(spec):
            total += _linear(h, spec.vocab_size, lay.lm_head_bias)
        elif lay.lm_head_bias:
            total += spec.vocab_size
    else:
        note = "backbone only (no lm_head)"
    if fam == "deepseek_v3" and c.get("num_nextn_predict_layers"):
        note = "main model; the multi-token-prediction layer(s) stored beside it are not counted"
    return Counts(total, inactive, note)


def _opt(spec: ModelSpec) -> Counts:
    c, h, ffn = spec.text_config, spec.hidden_size, spec.intermediate_size
    proj = int(c.get("word_embed_proj_dim") or h)
    bias, affine = bool(c.get("enable_bias", True)), bool(c.get("layer_norm_elementwise_affine", True))
    ln = _norm(h, True) if affine else 0
    total = spec.vocab_size * proj + (spec.max_position_embeddings + 2) * h  # OPT offsets positions by 2
    if proj != h:
        total += 2 * proj * h  # project_in / project_out, no bias
    if c.get("do_layer_norm_before", True) and not c.get("_remove_final_layer_norm", False):
        total += ln
    layer = 4 * _linear(h, h, bias) + _linear(h, ffn, bias) + _linear(ffn, h, bias) + 2 * ln
    total += spec.num_layers * layer
    if not spec.tie_word_embeddings and has_lm_head(spec):
        total += proj * spec.vocab_size
    return Counts(total)


def _bert(spec: ModelSpec) -> Counts:
    c, h, inter = spec.text_config, spec.hidden_size, spec.intermediate_size
    total = (spec.vocab_size + spec.max_position_embeddings + int(c.get("type_vocab_size", 2))) * h + 2 * h
    layer = 4 * _linear(h, h, True) + _linear(h, inter, True) + _linear(inter, h, True) + 2 * 2 * h
    total += spec.num_layers * layer
    arch = spec.architecture
    if arch.endswith("ForMaskedLM"):  # prediction-head transform + decoder bias; decoder weight tied
        return Counts(total + _linear(h, h, True) + 2 * h + spec.vocab_size + (
            0 if spec.tie_word_embeddings else h * spec.vocab_size), note="encoder + masked-LM head")
    return Counts(total + _linear(h, h, True), note="encoder + pooler" + (
        "" if arch.endswith("Model") else f"; the task head of {arch} is not counted"))


def _bart(spec: ModelSpec) -> Counts:
    c, d = spec.text_config, spec.hidden_size
    pos = (spec.max_position_embeddings + 2) * d  # learned positions offset by 2
    enc_ffn, dec_ffn = int(c.get("encoder_ffn_dim", 4096)), int(c.get("decoder_ffn_dim", 4096))
    attn = 4 * _linear(d, d, True)
    enc = attn + _linear(d, enc_ffn, True) + _linear(enc_ffn, d, True) + 2 * 2 * d
    dec = 2 * attn + _linear(d, dec_ffn, True) + _linear(dec_ffn, d, True) + 3 * 2 * d
    total = spec.vocab_size * d + 2 * (pos + 2 * d)  # shared embedding; per side: positions + layernorm_embedding
    total += spec.num_layers * enc + int(c.get("decoder_layers", spec.num_layers)) * dec
    if c.get("add_final_layer_norm"):  # mBART
        total += 2 * 2 * d
    return Counts(total, note="encoder + decoder; lm_head tied to the shared embedding")


def _t5(spec: ModelSpec) -> Counts:
    c, d = spec.text_config, spec.hidden_size
    inner, d_ff = spec.num_attention_heads * spec.head_dim, spec.intermediate_size
    gated = str(c.get("feed_forward_proj", "relu")).startswith("gated")
    attn = 3 * d * inner + inner * d
    ffn = (3 if gated else 2) * d * d_ff
    rel = int(c.get("relative_attention_num_buckets", 32)) * spec.num_attention_heads  # first layer of each stack
    dec_layers = spec.num_decoder_layers or spec.num_layers
    enc = spec.num_layers * (attn + ffn + 2 * d) + rel + d
    dec = dec_layers * (2 * attn + ffn + 3 * d) + rel + d
    total = spec.vocab_size * d + enc + dec
    if not spec.tie_word_embeddings:
        total += spec.vocab_size * d
    return Counts(total, note="encoder + decoder")


def _clip_vision(v: dict) -> int:
    h, inter = int(v.get("hidden_size", 1024)), int(v.get("intermediate_size", 4096))
    patch, image = int(v.get("patch_size", 14)), int(v.get("image_size", 336))
    emb = h + int(v.get("num_channels", 3)) * patch * patch * h + ((image // patch) ** 2 + 1) * h
    layer = 4 * _linear(h, h, True) + _linear(h, inter, True) + _linear(inter, h, True) + 2 * 2 * h
    return emb + 2 * 2 * h + int(v.get("num_hidden_layers", 24)) * layer


def _llava(spec: ModelSpec) -> Counts:
    lang = _decoder(spec)
    v = spec.config.get("vision_config") or {}
    if v.get("model_type", "clip_vision_model") != "clip_vision_model":
        return Counts(lang.total, lang.inactive, f"language model only ({v.get('model_type')} vision tower "
                                                 "and projector not counted)")
    layers = spec.config.get("vision_feature_layer", -2)
    n_feat = len(layers) if isinstance(layers, list) else 1
    bias = bool(spec.config.get("multimodal_projector_bias", True))
    ht, hv = spec.hidden_size, int(v.get("hidden_size", 1024)) * n_feat
    proj = _linear(hv, ht, bias) + _linear(ht, ht, bias)
    return Counts(lang.total + _clip_vision(v) + proj, lang.inactive, "language model + CLIP vision tower + projector")


def _qwen2_vl(spec: ModelSpec) -> Counts:
    lang = _decoder(spec)
    v = spec.config.get("vision_config") or {}
    dim, depth = int(v.get("embed_dim", 1280)), int(v.get("depth", 32))
    mlp = int(dim * float(v.get("mlp_ratio", 4)))
    patch = int(v.get("in_channels") or v.get("in_chans") or 3) * int(v.get("temporal_patch_size", 2)) * int(v.get("patch_size", 14)) ** 2
    block = 2 * 2 * dim + _linear(dim, 3 * dim, True) + _linear(dim, dim, True) + _mlp(dim, mlp, gated=False,
                                                                                        bias=True)
    merged = dim * int(v.get("spatial_merge_size", 2)) ** 2
    merger = 2 * dim + _linear(merged, merged, True) + _linear(merged, int(v.get("hidden_size", spec.hidden_size)),
                                                               True)
    return Counts(lang.total + patch * dim + depth * block + merger, lang.inactive, "language model + vision encoder")


def _language_only(spec: ModelSpec) -> Counts:
    lang = _decoder(spec)
    return Counts(lang.total, lang.inactive, f"language model only ({spec.text_family}); the vision encoder and "
                                             "projector are not counted")


def _mamba(spec: ModelSpec) -> Counts:
    """Mamba-1 (MambaForCausalLM, FalconMambaForCausalLM): per layer an RMSNorm and the mixer's in_proj,
    depthwise conv1d, x_proj, dt_proj, A_log, D and out_proj; Falcon-Mamba's inner norms hold no weights."""
    c, h = spec.text_config, spec.hidden_size
    inner = int(c.get("intermediate_size") or int(c.get("expand", 2)) * h)
    state, kernel = int(c.get("state_size", 16)), int(c.get("conv_kernel", 4))
    rank = c.get("time_step_rank", "auto")
    rank = math.ceil(h / 16) if rank == "auto" else int(rank)
    bias = bool(c.get("use_bias", False))
    mixer = (_linear(h, 2 * inner, bias) + inner * kernel + (inner if c.get("use_conv_bias", True) else 0)
             + _linear(inner, rank + 2 * state) + _linear(rank, inner, True) + inner * state + inner
             + _linear(inner, h, bias))
    total = spec.vocab_size * h + spec.num_layers * (h + mixer) + h
    if has_lm_head(spec) and not spec.tie_word_embeddings:
        total += spec.vocab_size * h
    return Counts(total, note=None if has_lm_head(spec) else "backbone only (no lm_head)")


_SPECIAL: dict[str, Callable[[ModelSpec], Counts]] = {
    "opt": _opt, "bert": _bert, "xlm-roberta": _bert, "roberta": _bert, "bart": _bart, "mbart": _bart,
    "t5": _t5, "mt5": _t5, "umt5": _t5, "llava": _llava, "qwen2_vl": _qwen2_vl,
    "internvl": _language_only, "phi3_v": _language_only, "qwen2_5_vl": _language_only, "gemma3": _language_only,
    "mamba": _mamba, "falcon_mamba": _mamba,
}


_NEEDED = ("num_layers", "hidden_size", "vocab_size", "num_attention_heads", "num_kv_heads", "head_dim",
           "intermediate_size")


def count(spec: ModelSpec) -> Counts:
    """Exact count for the families llmctl knows; UnsupportedModelError for the rest, where a size is unknown,
    and where one is of the wrong kind."""
    needed = _NEEDED[:3] if spec.attention == "none" else _NEEDED  # attention-free: no heads to size
    unknown = [name for name in needed if getattr(spec, name) is None]
    learned_positions = ("opt", "bert", "xlm-roberta", "roberta", "bart", "mbart")  # their tables are counted
    if spec.max_position_embeddings is None and spec.family in learned_positions:
        unknown.append("max_position_embeddings")
    if unknown:
        raise UnsupportedModelError(f"no parameter count from config: {', '.join(unknown)} unknown")
    special = _SPECIAL.get(spec.family)
    try:
        return special(spec) if special is not None else _decoder(spec)
    except (TypeError, ValueError, ZeroDivisionError) as err:
        raise UnsupportedModelError(
            f"cannot count the parameters of {spec.architecture} from its config ({type(err).__name__}: {err})",
            hint="the count is exact when the checkpoint has safetensors files: llmctl then sums their headers",
        ) from None
