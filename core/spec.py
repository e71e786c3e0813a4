"""Config files -> ModelSpec: one normalised, validated view of a checkpoint's architecture."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmctl.core.config_classes import config_class_facts
from llmctl.core.config_keys import (
    DEFAULTS,
    SizeReader,
    aliased,
    ENCODER_DECODER_TYPES,
    ENCODER_TYPES,
    INFERABLE_ARCHITECTURES,
    family_of,
    first,
    merged_text_config,
    norm_of,
    pooling_mode,
    qwen_prompt_limit,
    read_rope,
    with_defaults,
)
from llmctl.core.config_check import family_is_read, validate_config
from llmctl.core.errors import ModelReadError
from llmctl.core.values import as_int, is_finite_number
from llmctl.core.layer_plan import LayerPlan, layer_plan, layer_types


@dataclass(frozen=True, slots=True)
class MoESpec:
    """Mixture-of-experts layout. Which layers are sparse follows the checkpoint's own rule."""

    num_experts: int
    experts_per_token: int | None  # None: the config names no top-k llmctl can read
    num_shared_experts: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE sizes its one shared expert separately
    first_dense_layers: int = 0  # DeepSeek first_k_dense_replace
    layer_freq: int = 1  # DeepSeek moe_layer_freq / Qwen2-MoE decoder_sparse_step
    freq_offset: int = 0  # Qwen2-MoE counts (i + 1) % step; DeepSeek counts i % freq
    dense_layers: tuple[int, ...] = ()  # Qwen2-MoE mlp_only_layers

    def __post_init__(self) -> None:
        per_token = self.experts_per_token
        if self.num_experts < 1 or (per_token is not None and not 1 <= per_token <= self.num_experts):
            raise ModelReadError(
                f"bad MoE config: {self.experts_per_token} experts per token of {self.num_experts} experts"
            )

    def is_moe_layer(self, index: int) -> bool:
        if index < self.first_dense_layers or index in self.dense_layers:
            return False
        return (index + self.freq_offset) % max(self.layer_freq, 1) == 0


@dataclass(frozen=True, slots=True)
class MLASpec:
    """DeepSeek multi-head latent attention dimensions."""

    kv_lora_rank: int
    q_lora_rank: int | None
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a model is, read from its config files only (no weights, no torch).

    A size the config does not give in a form llmctl reads (an unfamiliar family's keys, a size that varies per
    layer) is None and named in `unknown`; attention-free models have no heads (None) and attention "none".
    """

    architecture: str
    model_type: str
    family: str
    text_family: str  # family of the language part (differs from `family` for multimodal checkpoints)
    kind: str  # "decoder-only" | "encoder-only" | "encoder-decoder"
    is_moe: bool
    is_multimodal: bool
    num_layers: int | None
    hidden_size: int | None
    intermediate_size: int | None
    num_attention_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    vocab_size: int | None
    max_position_embeddings: int | None
    attention: str | None  # "MHA" | "GQA" | "MQA" | "MLA" | "none" (attention-free); None when unknown
    position_embedding: str  # "rope" | "learned" | "alibi" | "relative" | "none" (attention-free)
    rope_type: str | None
    rope_theta: float | None
    rope_scaling: dict | None
    partial_rotary_factor: float
    sliding_window: int | None
    norm: str
    activation: str | None
    tie_word_embeddings: bool
    torch_dtype: str | None
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    quantization_config: dict | None = None
    pooling: str | None = None  # sentence-transformers pooling mode
    normalize_embeddings: bool = False  # sentence-transformers Normalize module
    max_seq_length: int | None = None  # sentence-transformers max_seq_length
    num_decoder_layers: int | None = None  # encoder-decoder models
    architectures: tuple[str, ...] = ()
    architecture_inferred: bool = False  # config.json had no `architectures`; taken from model_type
    layer_plan: LayerPlan | None = None  # hybrid / attention-free layouts; None: every layer is attention
    unknown: tuple[str, ...] = ()  # fields the config did not give in a form llmctl reads (left None)
    notes: tuple[str, ...] = ()
    generation_config: dict | None = field(default=None, compare=False, repr=False)
    tokenizer_config: dict | None = field(default=None, compare=False, repr=False)
    text_config: dict = field(default_factory=dict, compare=False, repr=False)  # language part, defaults filled
    config: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        may_be_none = self.unknown + (_NO_ATTENTION_FIELDS if self.attention == "none" else ())
        for name in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size"):
            value = getattr(self, name)
            if value is None and name in may_be_none:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelReadError(f"config.json: {name} must be a positive integer, got {value!r}")
        if self.num_attention_heads and self.num_kv_heads and self.num_attention_heads % self.num_kv_heads:
            raise ModelReadError(
                f"config.json: {self.num_attention_heads} attention heads do not split into "
                f"{self.num_kv_heads} key/value heads"
            )

    @property
    def context_length(self) -> int | None:
        return self.max_position_embeddings

    @property
    def is_embedding_model(self) -> bool:
        return self.pooling is not None


_NO_ATTENTION_FIELDS = ("num_attention_heads", "num_kv_heads", "head_dim")


def _int(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and is_finite_number(value) and value.is_integer():
        return int(value)
    number = as_int(value)
    if number is None:
        raise ModelReadError(f"config.json: {key} must be an integer, got {value!r}")
    return number


def _architecture(config: dict, model_type: str, extra: dict) -> tuple[str, tuple[str, ...], bool]:
    archs = config.get("architectures")
    if archs:
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ModelReadError(f"config.json: architectures must be a list of names, got {archs!r}")
        return archs[0], tuple(archs), False
    is_sentence_model = bool(extra.get("modules"))
    guess = INFERABLE_ARCHITECTURES.get(model_type)
    if guess and (model_type in ENCODER_TYPES or is_sentence_model):
        return guess, (guess,), True
    raise ModelReadError(
        "config.json has no `architectures` list, so the model class is unknown"
        + (f" (model_type {model_type!r} alone is ambiguous)" if model_type else ""),
        hint='add e.g. "architectures": ["LlamaForCausalLM"] to config.json',
    )


def spec_from_config(config: dict, *, extra: dict | None = None) -> ModelSpec:
    """Build a ModelSpec from a parsed config.json (plus optional side files in `extra`).

    `extra` keys (all optional): generation_config, tokenizer_config (dicts), modules (sentence-transformers
    modules.json list), pooling_config (its Pooling module's config.json), sentence_bert_config (dict).
    Values of the wrong kind raise ModelReadError: validate_config names the key for those it knows;
    a value of the wrong type anywhere else still ends as a ModelReadError, never as a crash.
    """
    validate_config(config)
    try:
        return _read_spec(config, extra or {})
    except (TypeError, ValueError, AttributeError, OverflowError) as err:
        raise ModelReadError(f"config.json holds a value of the wrong kind ({type(err).__name__}: {err})") from None


def _read_spec(config: dict, extra: dict) -> ModelSpec:
    model_type = str(config.get("model_type") or "")
    architecture, architectures, inferred = _architecture(config, model_type, extra)
    family = family_of(model_type, architecture)
    notes: list[str] = []
    if inferred:
        notes.append(f"config.json has no architectures; {architecture} inferred from model_type {model_type!r}")

    text = merged_text_config(config, family)
    text_type = str(text.get("model_type") or model_type)
    text_arch = (text.get("architectures") or [""])[0] if text is not config else architecture
    fam_text = family_of(text_type, text_arch) if text is not config else family
    cfg = with_defaults(text, DEFAULTS.get(text_type, DEFAULTS.get(fam_text, {})))
    facts = config_class_facts(text_type)  # the family's own key names and defaults, from transformers' source
    cfg = aliased(with_defaults(cfg, facts.defaults), facts.attribute_map)
    if model_type == "RefinedWeb" and "new_decoder_architecture" not in text:  # tiiuae/falcon-40b (remote code)
        cfg["new_decoder_architecture"] = True

    read = SizeReader(cfg)
    hidden = read.size("hidden_size", "hidden_size", "n_embd", "d_model")
    layers = read.size("num_layers", "num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers",
                       "num_encoder_layers", "decoder_layers")  # the last two: ProphetNet, TrOCR's decoder
    if layers is None and "num_layers" not in read.varying and layer_types(cfg):
        layers = len(layer_types(cfg))  # NemotronH: the layer count is the length of its block pattern
    plan = layer_plan(cfg, text_type, layers)
    mla = None
    if plan is not None and plan.is_attention_free:  # Mamba: no heads at all (Mamba-2's num_heads are SSM heads)
        heads = kv_heads = head_dim = None
        attention = "none"
    else:
        heads = read.size("num_attention_heads", "num_attention_heads", "n_head", "n_heads", "num_heads",
                          "encoder_attention_heads", "num_encoder_attention_heads", "decoder_attention_heads")
        kv_heads = _kv_heads(cfg, fam_text, heads, read)
        if cfg.get("kv_lora_rank"):
            mla = MLASpec(
                kv_lora_rank=read.size("kv_lora_rank"),
                q_lora_rank=read.size("q_lora_rank"),
                qk_nope_head_dim=read.size("qk_nope_head_dim") or 128,
                qk_rope_head_dim=read.size("qk_rope_head_dim") or 64,
                v_head_dim=read.size("v_head_dim") or 128,
            )
            head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
            attention = "MLA"
        else:
            head_dim = read.size("head_dim", "head_dim", "kv_channels", "d_kv", "attention_head_dim")
            if head_dim is None and "head_dim" not in read.varying and hidden and heads:
                head_dim = hidden // heads
            attention = (None if heads is None or kv_heads is None
                         else "MHA" if kv_heads == heads else "MQA" if kv_heads == 1 else "GQA")

    moe = _moe(cfg, read)
    intermediate = _intermediate(cfg, fam_text, hidden, read)
    position, rope_type, rope_theta, rope_scaling, partial = read_rope(cfg, fam_text, head_dim)
    if attention == "none":  # no attention, so no positions to encode (Mamba's recurrence orders tokens)
        position, rope_type, rope_theta, rope_scaling, partial = "none", None, None, None, 1.0
    rotary = int(head_dim * partial) if attention not in ("MLA", "none") and head_dim else 0
    # transformers refuses an odd rotary dimension too ("RoPE requires an even rotary dimension"); judged only
    # for the families whose config llmctl reads: elsewhere the head size or the rope itself may be a guess
    # (GLM-4-MoE sets its head size in its config class; Reformer has no rope)
    if position == "rope" and rotary % 2 and family_is_read(cfg):
        raise ModelReadError(f"config.json: the rotary dimension {rotary} (head_dim {head_dim} x {partial:g}) is odd: "
                             "rotary embeddings turn pairs of channels")
    sliding = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False or not sliding:
        sliding = None
    else:
        sliding = read.size("sliding_window")
        if sliding and cfg.get("layer_types") and "full_attention" in cfg["layer_types"]:
            notes.append(f"sliding window of {sliding} on some layers only (interleaved with full attention)")

    kind = ("encoder-decoder" if fam_text in ENCODER_DECODER_TYPES or config.get("is_encoder_decoder")
            else "encoder-only" if fam_text in ENCODER_TYPES else "decoder-only")
    is_multimodal = text is not config or any(k in config for k in ("vision_config", "visual", "img_processor",
                                                                      "vision_tower", "mm_vision_tower"))
    if is_multimodal:
        notes.append(f"multimodal: the language part is a {text_type or fam_text} model")
    vocab = read.size("vocab_size", "padded_vocab_size", "vocab_size", "n_vocab")
    max_pos = read.size("max_position_embeddings", "max_position_embeddings", "n_positions", "max_seq_len",
                        "seq_length", "model_max_length", "max_sequence_length")
    if fam_text == "qwen" and qwen_prompt_limit(cfg):
        notes.append(f"use_dynamic_ntk: prompts of at most seq_length ({qwen_prompt_limit(cfg)}) tokens; Qwen's "
                     "dynamic NTK rope for longer ones is not implemented (generation goes on past it)")
    values = {"num_layers": layers, "hidden_size": hidden, "num_attention_heads": heads, "num_kv_heads": kv_heads,
              "head_dim": head_dim, "vocab_size": vocab}
    unknown = tuple(name for name, value in values.items()
                    if value is None and not (attention == "none" and name in _NO_ATTENTION_FIELDS))
    notes.extend(dict.fromkeys(read.notes))  # a size read twice is said once
    if unknown:
        notes.append(f"config.json does not give {', '.join(unknown)} in a form llmctl reads "
                     f"(model_type {text_type or '?'}): left unknown, with what depends on them")
    if plan is not None and layers:
        notes.append(plan.describe(layers) if attention != "none" else
                     f"attention-free: {layers} {next(iter(plan.state_layers))} layers, no KV cache")

    modules = extra.get("modules") or []
    pool_cfg = extra.get("pooling_config") or {}
    st_cfg = extra.get("sentence_bert_config") or {}
    dtype = first(cfg, "torch_dtype", "dtype") or first(config, "torch_dtype", "dtype")
    return ModelSpec(
        architecture=architecture,
        architectures=architectures,
        architecture_inferred=inferred,
        layer_plan=plan,
        unknown=unknown,
        model_type=model_type,
        family=family,
        text_family=fam_text,
        kind=kind,
        is_moe=moe is not None,
        is_multimodal=is_multimodal,
        num_layers=layers,
        num_decoder_layers=_int(first(cfg, "num_decoder_layers", "decoder_layers"), "num_decoder_layers")
        if kind == "encoder-decoder" else None,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        max_position_embeddings=max_pos,
        attention=attention,
        position_embedding=position,
        rope_type=rope_type,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        partial_rotary_factor=partial,
        sliding_window=sliding,
        norm=norm_of(cfg, fam_text),
        activation=_activation(cfg),
        tie_word_embeddings=bool(first(config, "tie_word_embeddings") if "tie_word_embeddings" in config
                                 else cfg.get("tie_word_embeddings", False)),
        torch_dtype=str(dtype) if dtype and dtype != "auto" else None,  # "auto": whatever the weights hold
        moe=moe,
        mla=mla,
        quantization_config=config.get("quantization_config") or cfg.get("quantization_config"),
        pooling=pooling_mode(pool_cfg) if pool_cfg else None,
        normalize_embeddings=any(str(m.get("type", "")).endswith(".Normalize") for m in modules if isinstance(m, dict)),
        max_seq_length=_int(st_cfg.get("max_seq_length"), "max_seq_length"),
        notes=tuple(notes),
        generation_config=extra.get("generation_config"),
        tokenizer_config=extra.get("tokenizer_config"),
        text_config=cfg,
        config=config,
    )


def _kv_heads(cfg: dict, family: str, heads: int | None, read: SizeReader) -> int | None:
    if heads is None:
        return None
    if family == "falcon":  # tiiuae/falcon-7b: multi_query; falcon-40b: new_decoder_architecture + num_kv_heads
        if cfg.get("new_decoder_architecture"):
            return int(first(cfg, "num_kv_heads", "n_head_kv") or heads)
        return 1 if cfg.get("multi_query", True) else heads
    if family == "chatglm":
        return int(cfg.get("multi_query_group_num") or heads) if cfg.get("multi_query_attention") else heads
    if family == "mpt":
        return int((cfg.get("attn_config") or {}).get("kv_n_heads") or heads)
    if cfg.get("multi_query") is True:  # gpt_bigcode
        return 1
    kv = read.size("num_kv_heads", "num_key_value_heads", "num_kv_heads", "n_head_kv")
    return None if kv is None and "num_kv_heads" in read.varying else kv or heads


def _intermediate(cfg: dict, family: str, hidden: int | None, read: SizeReader) -> int | None:
    keys = ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "d_ff", "encoder_ffn_dim")
    value = read.size("intermediate_size", *keys, *(("hidden_dim",) if family == "distilbert" else ()))
    if family == "qwen" and value is not None:  # Qwen (v1) counts both halves of its w1 / w2 pair
        return value // 2
    if value is not None or "intermediate_size" in read.varying or hidden is None:
        return value
    if family == "mpt":
        return int(cfg.get("expansion_ratio", 4) * hidden)
    if family in ("gpt2", "gptj", "bloom", "falcon", "gpt_neox"):
        return 4 * hidden
    return None


def _moe(cfg: dict, read: SizeReader) -> MoESpec | None:
    experts = read.size("num_experts", "num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts")
    if not experts:
        return None
    per_token = read.size("experts_per_token", "num_experts_per_tok", "num_experts_per_token", "moe_top_k", "top_k",
                          "moe_k", "moe_topk")
    if per_token is None:
        read.notes.append("MoE: the config names no experts-per-token count llmctl reads; active parameters unknown")
    qwen_style = "decoder_sparse_step" in cfg or "shared_expert_intermediate_size" in cfg
    shared_size = read.size("shared_expert_intermediate_size") or 0
    freq = read.size("layer_freq", "decoder_sparse_step", "moe_layer_freq", "expert_layer_period") or 1
    offset = 1 if qwen_style else 0
    if "expert_layer_period" in cfg:  # Jamba: experts on layers where i % period == expert_layer_offset
        offset = (freq - (read.size("expert_layer_offset") or 0)) % freq
    types = [str(t).lower() for t in layer_types(cfg) or ()]
    dense = tuple(v for v in cfg.get("mlp_only_layers") or () if isinstance(v, int))
    if "moe" in types:  # NemotronH: the layer pattern names its MoE layers
        dense = tuple(i for i, t in enumerate(types) if t != "moe")
    return MoESpec(
        num_experts=experts,
        experts_per_token=per_token,
        num_shared_experts=read.size("n_shared_experts") or (1 if shared_size else 0),
        moe_intermediate_size=read.size("moe_intermediate_size") or read.size("intermediate_size") or 0,
        shared_expert_intermediate_size=shared_size,
        first_dense_layers=read.size("first_dense_layers", "first_k_dense_replace", "moe_layer_start_index") or 0,
        layer_freq=freq,
        freq_offset=offset,
        dense_layers=dense,
    )


def _activation(cfg: dict) -> str | None:
    act = first(cfg, "hidden_activation", "hidden_act", "activation_function", "activation", "feed_forward_proj")
    return str(act) if act is not None else None


def load_spec(source: Any) -> ModelSpec:
    """Read the config files of a ModelSource (see core.resolve) and build its ModelSpec."""
    config = source.read_json("config.json")
    if config is None:
        raise ModelReadError(f"{source.display} has no config.json")
    extra: dict[str, Any] = {}
    for key, filename in (("generation_config", "generation_config.json"),
                          ("tokenizer_config", "tokenizer_config.json"),
                          ("sentence_bert_config", "sentence_bert_config.json")):
        extra[key] = _read_optional(source, filename)
    modules = _read_optional(source, "modules.json")
    if isinstance(modules, list):
        extra["modules"] = modules
        for module in modules:
            if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
                extra["pooling_config"] = _read_optional(source, f"{module.get('path', '1_Pooling')}/config.json")
    spec = spec_from_config(config, extra=extra)
    info = getattr(source, "gguf_info", None)
    if info is not None and info.file_type and spec.torch_dtype is None:
        from dataclasses import replace

        spec = replace(spec, torch_dtype=str(info.file_type))
    return spec


def _read_optional(source: Any, filename: str) -> Any:
    """A side file, or None when absent. Its JSON may be a list (modules.json), so parse leniently."""
    try:
        return source.read_json(filename)
    except ModelReadError:
        if filename == "modules.json":
            raw = getattr(source, "_read_bytes", lambda _f: None)(filename)
            if raw is not None:
                import json

                try:
                    return json.loads(raw)
                except ValueError:
                    pass
        raise
