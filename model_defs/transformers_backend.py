"""The transformers backend: a transformers causal LM inside llmctl's engine, attending through its paged KV cache.

transformers builds the model (from its config for dummy weights, else with its own from_pretrained, so its
checkpoint conversions apply; no download beyond what resolution fetched); llmctl's attention is registered
in transformers' AttentionInterface under ATTN_IMPLEMENTATION, so every attention module of the model
hands its q/k/v (after its own rotary) to `llmctl_attention`, which writes k/v into the paged cache at the
step's slot_mapping and attends with the same dispatched ops as model_defs/layers/attention.py. The
packed batch goes in as batch size 1 with the real positions; transformers builds no mask for an
attention implementation its mask interface does not know (masking_utils._preprocess_mask_arguments),
so nothing O(T^2) is made outside the attention op.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import importlib
import inspect
import sys

import torch
from torch import nn

from llmctl.core import backend_features as features
from llmctl.core.backend_features import NO_BASE_REASON
from llmctl.core.errors import UnsupportedModelError
from llmctl.kernels.dispatch import get_op
from llmctl.model_defs.base import CausalLM
from llmctl.model_defs.layers.context import ForwardContext

ATTN_IMPLEMENTATION = "llmctl_paged"

# The step's ForwardContext, bound by TransformersForCausalLM.forward for the duration of one forward pass.
# A context variable rather than a forward kwarg: transformers' decoder families differ in which kwargs they
# pass down to the attention function, but all of them call it inside the model's forward.
_STEP: contextvars.ContextVar[ForwardContext | None] = contextvars.ContextVar("llmctl_step", default=None)


def llmctl_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: q (1, nh, T, hd), k/v (1, nkv, T, hd) -> ((1, T, nh, hd), None).

    The module's layer_idx picks its KV cache; sliding window, logit softcap and scaling come from the
    call's kwargs or else the module's attributes (the names transformers' decoder families use).
    """
    ctx = _STEP.get()
    if ctx is None:
        raise RuntimeError("llmctl's attention was called outside TransformersForCausalLM.forward")
    if query.shape[0] != 1:
        raise RuntimeError(f"llmctl's attention takes one packed batch (batch size 1), got {query.shape[0]}")
    if kwargs.get("s_aux") is not None:
        raise UnsupportedModelError(f"{type(module).__name__} uses attention sinks, which llmctl's attention lacks")
    meta = ctx.attn_metadata
    num_heads, head_dim = query.shape[1], query.shape[3]
    q = query[0].transpose(0, 1)  # (T, nh, hd)
    k = key[0].transpose(0, 1)  # (T, nkv, hd)
    v = value[0].transpose(0, 1)
    if v.shape[-1] != head_dim:
        raise UnsupportedModelError(f"{type(module).__name__}: value head size differs from the query's")
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    softcap = kwargs.get("softcap", getattr(module, "attn_logit_softcapping", None))
    options = dict(
        scale=scaling if scaling is not None else head_dim**-0.5,
        sliding_window=int(window) if window else None,
        logit_softcap=float(softcap) if softcap else None,
        causal=bool(kwargs.get("is_causal", getattr(module, "is_causal", True))) and meta.causal,
    )
    if ctx.kv_caches is None:
        out = get_op("varlen_attention", q.device)(q, k.contiguous(), v.contiguous(), meta.query_start_loc, **options)
    else:
        kv_cache = ctx.kv_caches[_layer_index(module)]
        get_op("write_kv", q.device)(k, v, kv_cache, meta.slot_mapping)
        out = get_op("paged_attention", q.device)(
            q.contiguous(), kv_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables, k=k, v=v, **options
        )
    return out.reshape(1, -1, num_heads, head_dim), None  # (1, T, nh, hd)


def _layer_index(module: nn.Module) -> int:
    idx = getattr(module, "layer_idx", None)
    if idx is None:
        raise UnsupportedModelError(
            f"{type(module).__name__} does not say its layer index (layer_idx): llmctl cannot find its KV cache"
        )
    return int(idx)


def register_attention() -> None:
    """Register llmctl_attention in transformers' AttentionInterface (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, llmctl_attention)


def transformers_class(architecture: str):
    """The transformers class named `architecture`, or None when the installed transformers has none."""
    transformers = importlib.import_module("transformers")
    try:
        return getattr(transformers, architecture)
    except (AttributeError, ImportError):
        return None


def _text_config(config):
    return getattr(config, "text_config", None) or config


def kv_cache_shape(config) -> tuple[int, int, int]:
    """(num_layers, num_kv_heads, head_dim) from the (text) config; head size keys win over hidden / heads.

    transformers' attention modules are not llmctl's Attention layers, so the backend reads the layout
    from the config its classes were built from (they read the same keys).
    """
    text = _text_config(config)
    num_heads = text.num_attention_heads
    num_kv_heads = getattr(text, "num_key_value_heads", None) or num_heads
    # MLA families (DeepSeek-V2/V3, MiniCPM3) attend with query/key heads of nope + rope channels, while their
    # config's head_dim names the rope part only.
    nope, rope = getattr(text, "qk_nope_head_dim", None), getattr(text, "qk_rope_head_dim", None)
    head_dim = (
        getattr(text, "qk_head_dim", None) or (nope + rope if nope and rope else None)
        or getattr(text, "head_dim", None) or text.hidden_size // num_heads
    )  # fmt: skip
    return text.num_hidden_layers, num_kv_heads, head_dim


def backend_blocker(hf) -> str | None:
    """Why the built transformers model `hf` would not run correctly here, or None (core/backend_features.py's rules).

    Read from what was built: the cache layer kinds transformers itself would allocate for it, then every
    module below the model classes: a causal Conv1d over the sequence or a layer class whose code keeps
    conv / SSM / recurrent state, attention sinks, a value head size unlike the query's, a forward that
    reads the attention mask.
    """
    from transformers import PreTrainedModel

    types = _cache_layer_types(_text_config(hf.config))
    found: dict[str, set[str]] = {"state": set(), "mask": set(), "sinks": set()}
    value_head = None
    modules = dict(hf.named_modules())
    for name, module in modules.items():
        if isinstance(module, PreTrainedModel):
            continue
        if isinstance(module, nn.Conv1d):  # a causal convolution over the tokens: its window is state
            found["state"].add(type(modules[name.rpartition(".")[0]]).__name__)
        if isinstance(getattr(module, "sinks", None), torch.Tensor):
            found["sinks"].add(type(module).__name__)
        for feature, classes in _module_features(type(module).__module__).items():
            found[feature] |= classes & {type(module).__name__}
        query = getattr(module, "qk_head_dim", None) or getattr(module, "head_dim", None)
        value_head = value_head or features.value_head_reason(getattr(module, "v_head_dim", None), query)
    layers = features.layer_types_blocker(types) if types else None
    return features.joined(layers, features.features_blocker(found, None), value_head)


@functools.lru_cache(maxsize=None)
def _module_features(module_name: str) -> dict[str, set[str]]:
    """class_features of a whole modeling module (read and parsed once per module)."""
    if module_name.startswith("torch."):  # torch's own layers: Conv1d is judged by where it sits
        return {}
    try:
        source = inspect.getsource(sys.modules[module_name])
    except (OSError, TypeError, KeyError):  # built-in or generated modules: nothing to read
        return {}
    return features.class_features(source)


def _cache_layer_types(config) -> list[str] | None:
    """The per-layer cache kinds transformers would allocate for `config` (its own reading of the layout)."""
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        types, _ = get_layer_types_and_kwargs(config)
    except Exception:  # older transformers, or a config its helper cannot read: the module tree still decides
        return features.layer_types(config.to_dict())
    return list(types)


class TransformersForCausalLM(CausalLM):
    """Any transformers causal LM whose attention goes through the AttentionInterface, on llmctl's engine.

    The transformers model's children become this module's children, so parameter names are the
    checkpoint's names. model(input_ids (T,), positions (T,), ctx) -> hidden (T, H) runs only the base
    model; compute_logits(hidden (N, H)) -> (N, V) applies the output embedding and the config's final
    logit soft-capping / logit scale where the family has them.
    """

    is_transformers_backend = True
    # transformers' modeling code may sync with the host inside a forward: decode steps run eagerly (padded).
    supports_cuda_graphs = False

    def __init__(self, config, trust_remote_code: bool = False, hf_model=None):
        nn.Module.__init__(self)  # transformers builds the backbone and head: none of CausalLM's construction applies
        register_attention()
        config = copy.deepcopy(config)  # transformers writes dtype and attn_implementation into its config
        architecture = (getattr(config, "architectures", None) or [None])[0]
        cls = transformers_class(architecture) if architecture else None
        with _quiet_transformers():
            if hf_model is not None:  # from_checkpoint: transformers built and loaded it
                hf = hf_model
            elif cls is not None:
                hf = cls._from_config(config, attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32)
            else:  # remote code (trust_remote_code) or an architecture string transformers spells otherwise
                from transformers import AutoModelForCausalLM

                hf = AutoModelForCausalLM.from_config(
                    config, attn_implementation=ATTN_IMPLEMENTATION, trust_remote_code=trust_remote_code,
                    dtype=torch.float32,
                )  # float32 while building: the loader gives the parameters the run dtype; buffers stay exact
        if not getattr(hf, "_supports_attention_backend", False):
            raise UnsupportedModelError(
                f"transformers' {type(hf).__name__} does not route attention through its AttentionInterface, "
                "so llmctl's paged attention cannot serve it"
            )
        base = hf.base_model_prefix if hasattr(hf, hf.base_model_prefix) else None
        head = next((name for name, child in hf.named_children() if child is hf.get_output_embeddings()), None)
        reason = features.joined(
            backend_blocker(hf), NO_BASE_REASON.format(architecture=type(hf).__name__) if None in (base, head) else None
        )
        if reason is not None:
            raise UnsupportedModelError(f"{type(hf).__name__} cannot run through the transformers backend: {reason}")
        self.config = hf.config
        self.architecture = type(hf).__name__
        for name, child in hf.named_children():
            self.add_module(name, child)
        self._base_name, self._head_name = base, head
        text = _text_config(self.config)
        self.final_logit_softcap = getattr(text, "final_logit_softcapping", None)
        self.logit_scale = getattr(text, "logit_scale", None)  # Cohere multiplies its logits
        self.logits_scaling = getattr(text, "logits_scaling", None)  # Granite divides them

    @classmethod
    def from_checkpoint(cls, path, config, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False):
        """Build and load the model with transformers' own from_pretrained (a folder or a .gguf file).

        transformers then applies its checkpoint conversions itself (MoE experts fused, tensors renamed in
        transformers 5), reads safetensors or weights-only pickles, and dequantises GGUF files.
        """
        from pathlib import Path

        from transformers import AutoModelForCausalLM

        register_attention()
        path = Path(path)
        architecture = (getattr(config, "architectures", None) or [None])[0]
        auto = (transformers_class(architecture) if architecture and not trust_remote_code else None)
        auto = auto or AutoModelForCausalLM
        kw = dict(attn_implementation=ATTN_IMPLEMENTATION, dtype=dtype, trust_remote_code=trust_remote_code)
        if not path.is_file():
            kw["config"] = copy.deepcopy(config)
        with _quiet_transformers():
            if path.is_file():  # GGUF: transformers dequantises it on the CPU
                hf = auto.from_pretrained(str(path.parent), gguf_file=path.name, **kw)
            else:
                hf = auto.from_pretrained(str(path), **kw)
        return cls(hf.config, trust_remote_code, hf_model=hf.to(device).eval())

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        base = getattr(self, self._base_name)
        token = _STEP.set(ctx)
        try:
            out = base(
                input_ids=input_ids[None],  # (1, T): the packed batch as one row
                position_ids=positions[None],
                attention_mask=None,
                use_cache=False,
                return_dict=True,
            )
        finally:
            _STEP.reset(token)
        return out.last_hidden_state[0]  # (T, H)

    def kv_cache_shape(self) -> tuple[int, int, int]:
        return kv_cache_shape(self.config)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = getattr(self, self._head_name)(hidden_states)  # (N, V)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.logits_scaling is not None:
            logits = logits / self.logits_scaling
        if self.final_logit_softcap is not None:
            logits = torch.tanh(logits / self.final_logit_softcap) * self.final_logit_softcap
        return logits


class TransformersRemoteForCausalLM(TransformersForCausalLM):
    """The same, for a repo whose model code transformers imports from the repo (trust_remote_code=True)."""

    def __init__(self, config, trust_remote_code: bool = True, hf_model=None):
        super().__init__(config, trust_remote_code=True, hf_model=hf_model)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' init-time warnings (random-init notices) while the empty model is built."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
