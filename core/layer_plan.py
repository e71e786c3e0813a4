"""Which layers keep a KV cache and which keep recurrent state (Mamba, linear attention, convolution), from config."""

from __future__ import annotations

from dataclasses import dataclass, field

# Families with no attention at all: every layer is a state-space (or recurrent) block.
ATTENTION_FREE_TYPES = {"mamba": "mamba", "falcon_mamba": "mamba", "mamba2": "mamba2", "rwkv": "rwkv",
                        "xlstm": "xlstm"}

# layer_types / layers_block_type / block_types spellings. Anything naming attention keeps a KV cache except
# linear attention (a recurrent state: Qwen3-Next, MiniMax, Kimi-Linear, and NemotronH's Mamba layers).
_STATE_TYPES = {"linear_attention": "linear attention", "mamba": "mamba", "mamba2": "mamba2", "conv": "convolution",
                "recurrent": "recurrent", "ssm": "mamba", "m": "mamba"}
_BOTH_TYPES = {"hybrid", "hybrid_sliding"}  # Zamba: a Mamba block plus the shared attention block
_FFN_ONLY_TYPES = {"mlp", "moe", "dense", "sparse", "-", "e"}  # NemotronH's feed-forward-only layers


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """kv_layers: layers that keep a KV cache; state_layers: layer kind -> how many keep a fixed-size state."""

    kv_layers: int
    state_layers: dict[str, int] = field(default_factory=dict)
    source: str = ""

    @property
    def is_attention_free(self) -> bool:
        return self.kv_layers == 0 and bool(self.state_layers)

    def describe(self, num_layers: int) -> str:
        state = ", ".join(f"{n} {kind}" for kind, n in self.state_layers.items())
        text = f"{self.kv_layers} of {num_layers} layers keep a KV cache"
        return text + (f"; state layers: {state}" if state else "")


def _from_types(types: list, source: str, has_mamba: bool) -> LayerPlan | None:
    kv, state, known = 0, {}, False
    for entry in types:
        name = str(entry).lower()
        if name == "linear_attention" and has_mamba:  # NemotronH, Zamba, Granite-4.0-H name their Mamba layers so
            name = "mamba"
        if name in _BOTH_TYPES:
            kv += 1
            state["mamba"] = state.get("mamba", 0) + 1
            known = True
        elif name in _STATE_TYPES:
            state[_STATE_TYPES[name]] = state.get(_STATE_TYPES[name], 0) + 1
            known = True
        elif "attention" in name or name in ("attn", "*"):
            kv += 1
            known = True
        elif name in _FFN_ONLY_TYPES:
            known = True
    return LayerPlan(kv, state, source) if known else None  # a vision model's "basic"/"bottleneck" stages say nothing


_PATTERN = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}  # NemotronH's hybrid_override_pattern


def layer_types(cfg: dict) -> list | None:
    """The per-layer type list a config carries, under any of the names families use, or derives as its
    transformers config class does from an older key (hub files often carry only that one)."""
    for key in ("layer_types", "layers_block_type", "block_types"):
        value = cfg.get(key)
        if isinstance(value, list) and value:
            return value
    pattern = cfg.get("hybrid_override_pattern")  # NemotronH before transformers 5: "M-M-M*-..."
    if isinstance(pattern, str) and pattern:
        return [_PATTERN.get(char, char) for char in pattern]
    kinds = cfg.get("attn_type_list")  # MiniMax-Text-01: 1 softmax attention, 0 lightning (linear) attention
    if isinstance(kinds, list) and kinds:
        return ["full_attention" if kind == 1 else "linear_attention" for kind in kinds]
    layers = cfg.get("num_hidden_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers <= 0:
        return None
    indices = cfg.get("full_attn_idxs")  # LFM2: attention at these layers, short convolutions elsewhere
    if isinstance(indices, list):
        return ["full_attention" if i in indices else "conv" for i in range(layers)]
    every = cfg.get("full_attention_interval") or cfg.get("layer_group_size")  # Qwen3-Next / Ling hybrid
    if isinstance(every, int) and not isinstance(every, bool) and every > 0:
        return ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(layers)]
    return None


def layer_plan(cfg: dict, model_type: str, num_layers: int | None) -> LayerPlan | None:
    """The plan when the config says something other than 'every layer is attention', else None."""
    if model_type in ATTENTION_FREE_TYPES and num_layers:
        return LayerPlan(0, {ATTENTION_FREE_TYPES[model_type]: num_layers}, "attention-free family")
    types = layer_types(cfg)
    if types is not None:
        block_types = cfg.get("block_types")
        if types is block_types and num_layers and len(types) < num_layers:  # RecurrentGemma repeats its pattern
            types = [types[i % len(types)] for i in range(num_layers)]
        has_mamba = any(key.startswith("mamba_") or key == "ssm_state_size" for key in cfg)
        plan = _from_types(types, "layer types", has_mamba)
        if plan is not None and not plan.state_layers and plan.kv_layers == (num_layers or len(types)):
            return None  # all attention: nothing to say beyond the usual
        return plan
    if not num_layers:
        return None
    period = cfg.get("attn_layer_period")  # Jamba: one attention layer every `period`, at `offset`
    if isinstance(period, int) and period > 0 and any(k.startswith("mamba_") for k in cfg):
        offset = int(cfg.get("attn_layer_offset") or 0)
        kv = sum(1 for i in range(num_layers) if i % period == offset)
        return LayerPlan(kv, {"mamba": num_layers - kv}, "attn_layer_period")
    indices = cfg.get("attn_layer_indices")  # Bamba: attention at these indices, Mamba elsewhere
    if "attn_layer_indices" in cfg and any(k.startswith("mamba_") for k in cfg):
        kv = len(set(indices or ()))
        return LayerPlan(kv, {"mamba": num_layers - kv}, "attn_layer_indices")
    if "mamba_d_ssm" in cfg:  # Falcon-H1: attention and Mamba side by side in every layer
        return LayerPlan(num_layers, {"mamba": num_layers}, "parallel hybrid")
    return None


def mamba_state_elements(cfg: dict, hidden: int | None, kind: str) -> int | None:
    """Elements of one Mamba layer's per-sequence state (convolution window + SSM state).

    Mamba-1: conv (intermediate, conv_kernel) + ssm (intermediate, state_size). Mamba-2: conv (intermediate +
    2 * n_groups * state_size, conv_kernel) + ssm (num_heads, head_dim, state_size). None when a size is missing.
    """
    def pick(*keys):
        for key in keys:
            value = cfg.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    state = pick("state_size", "ssm_state_size", "mamba_d_state")
    conv = pick("conv_kernel", "mamba_d_conv")
    expand = pick("expand", "mamba_expand")
    inner = pick("mamba_d_ssm") or (expand * hidden if expand and hidden else None)
    mamba2_keys = ("mamba_n_heads", "mamba_num_heads", "n_groups", "mamba_n_groups", "mamba_ngroups", "mamba_headdim")
    if kind == "mamba" and not any(key in cfg for key in mamba2_keys):
        inner = pick("intermediate_size") if "state_size" in cfg else inner  # Mamba-1 stores expand * hidden
        if None in (state, conv, inner):
            return None
        return inner * conv + inner * state
    heads = pick("mamba_n_heads", "mamba_num_heads", "num_heads", "n_mamba_heads")
    head_dim = pick("mamba_d_head", "mamba_head_dim", "head_dim", "mamba_headdim")
    groups = pick("n_groups", "mamba_n_groups", "mamba_ngroups") or 1
    if None in (state, conv, heads, head_dim):
        return None
    inner = inner or heads * head_dim
    return (inner + 2 * groups * state) * conv + heads * head_dim * state
