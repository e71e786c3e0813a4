"""What the transformers backend cannot serve, read from a model's config and transformers' source text (no torch).

llmctl's engine keeps per-layer attention keys and values in its paged cache and attends with one op
(causal, full or sliding window, optional logit soft-cap), handing transformers' layers no attention mask
(none is built for an attention implementation transformers' mask interface does not know). A model runs
correctly through the backend only when every layer is such an attention layer, an MLP, or nothing.
Everything else is refused with a reason, both here for `check` (config + source text) and at load time
(model_defs/transformers_backend.py, from the built module tree with the same class-level rules):

- layers that keep state between steps other than attention KV: convolution, SSM / Mamba, linear or
  "lightning" attention, gated delta nets (transformers' layer types conv / linear_attention / hybrid, or a
  hybrid layout given by layers_block_type / hybrid_override_pattern / attn_layer_indices / attn_layer_period);
- attention patterns the op lacks (chunked, indexed / sparse, ...), attention sinks, and a value head size
  that differs from the query's;
- modules that read the attention mask themselves (an indexer, a mask edit before attention);
- a causal-LM class whose base model is not where its base_model_prefix says (nothing llmctl can drive).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from typing import Any

ATTENTION_LAYER_TYPES = frozenset({"full_attention", "sliding_attention", "attention"})
PLAIN_LAYER_TYPES = frozenset({"moe", "mlp", "dense", "sparse", "dummy"})  # no attention, no state
STATE_LAYER_TYPES = frozenset({"conv", "linear_attention", "mamba", "mamba2", "hybrid", "hybrid_sliding", "ssm"})
# NemotronH's hybrid_override_pattern letters.
_PATTERN_LETTERS = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}

# Source text of a layer class that carries state across forward calls: a cache's conv / SSM / recurrent
# state, Mamba's cache_params, MiniMax's linear_cache, or a causal convolution over the sequence.
_STATE_TEXT = re.compile(r"conv_state|ssm_state|recurrent_state|cache_params|linear_cache|nn\.Conv1d\(")
_SINKS_TEXT = re.compile(r"\bs_aux=|self\.sinks\s*=\s*nn\.Parameter")

STATE_REASON = (
    "its {what} layers keep state between steps besides attention keys and values (convolution, SSM or "
    "linear-attention state), which llmctl's paged KV cache does not hold: each decode step would see only "
    "the new token"
)
NO_BASE_REASON = "{architecture} has no base model / output embedding llmctl can drive"


def layer_types(config: dict[str, Any]) -> list[str] | None:
    """Each layer's kind as transformers names it, from whichever key the family uses, or None when none says."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    types = text.get("layer_types")
    if isinstance(types, list) and all(isinstance(t, str) for t in types):
        return list(types)
    blocks = text.get("layers_block_type")
    if isinstance(blocks, list) and all(isinstance(t, str) for t in blocks):
        return list(blocks)
    pattern = text.get("hybrid_override_pattern")
    if isinstance(pattern, str) and pattern:
        return [_PATTERN_LETTERS.get(letter, letter) for letter in pattern]
    layers = text.get("num_hidden_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or not 0 < layers <= 100_000:
        return None
    indices = text.get("attn_layer_indices")
    if isinstance(indices, list):
        return ["attention" if i in indices else "mamba" for i in range(layers)]
    period, offset = text.get("attn_layer_period"), text.get("attn_layer_offset")
    if isinstance(period, int) and isinstance(offset, int) and period > 0:
        return ["attention" if i % period == offset else "mamba" for i in range(layers)]
    return None


def joined(*reasons: str | None) -> str | None:
    """Every reason that applies, in one line ("; " between them), or None."""
    found = [r for r in reasons if r]
    return "; ".join(dict.fromkeys(found)) if found else None


def layer_types_blocker(types: Iterable[str]) -> str | None:
    """Why layers of these kinds cannot run through the backend, or None."""
    kinds = list(dict.fromkeys(types))
    state = [t for t in kinds if t in STATE_LAYER_TYPES]
    other = [t for t in kinds if t not in ATTENTION_LAYER_TYPES | PLAIN_LAYER_TYPES | STATE_LAYER_TYPES]
    return joined(
        STATE_REASON.format(what=", ".join(state)) if state else None,
        f"its {', '.join(other)} layers need an attention pattern llmctl's attention op lacks "
        "(it serves causal full and sliding-window attention)" if other else None,
    )


def value_head_blocker(config: dict[str, Any]) -> str | None:
    """A value head size unlike the query's (DeepSeek-style MLA, MiMo-V2): llmctl's op and cache use one head size."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    value = _int(text.get("v_head_dim"))
    nope, rope = _int(text.get("qk_nope_head_dim")), _int(text.get("qk_rope_head_dim"))
    query = _int(text.get("qk_head_dim")) or (nope + rope if nope and rope else None) or _int(text.get("head_dim"))
    return value_head_reason(value, query)


def value_head_reason(value: int | None, query: int | None) -> str | None:
    if value and query and value != query:
        return f"its value head size ({value}) differs from the query's ({query}), which llmctl's attention op lacks"
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def class_features(source: str, class_name: str | None = None) -> dict[str, set[str]]:
    """{feature: class names} for the layer classes of a modeling file (or only `class_name`).

    Features: "state" (carries state across calls), "mask" (its forward reads the attention mask), "sinks"
    (attention sinks). Model classes (PreTrainedModel subclasses) orchestrate and are skipped.
    """
    found: dict[str, set[str]] = {"state": set(), "mask": set(), "sinks": set()}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return found
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or (class_name and node.name != class_name) or _is_model_class(node):
            continue
        text = ast.get_source_segment(source, node) or ""
        if _STATE_TEXT.search(text):
            found["state"].add(node.name)
        if _SINKS_TEXT.search(text):
            found["sinks"].add(node.name)
        if any(_reads_mask(fn) for fn in node.body if isinstance(fn, ast.FunctionDef) and fn.name == "forward"):
            found["mask"].add(node.name)
    return found


def _is_model_class(node: ast.ClassDef) -> bool:
    names = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    return any(n.endswith("PreTrainedModel") or n == "GenerationMixin" for n in names)


def _reads_mask(fn: ast.FunctionDef) -> bool:
    """The forward indexes, slices or calls methods on attention_mask (not just passes it on)."""
    for sub in ast.walk(fn):
        if isinstance(sub, (ast.Subscript, ast.Attribute)):
            value = sub.value
            if isinstance(value, ast.Name) and value.id == "attention_mask":
                return True
    return False


def features_blocker(features: dict[str, set[str]], types: list[str] | None) -> str | None:
    """The reason of class_features' findings (for the classes a model builds), given its layer kinds."""
    reasons = []
    if features["state"] and (types is None or any(t not in ATTENTION_LAYER_TYPES | PLAIN_LAYER_TYPES for t in types)):
        reasons.append(STATE_REASON.format(what=", ".join(sorted(features["state"]))))
    if features["sinks"]:
        names = ", ".join(sorted(features["sinks"]))
        reasons.append(f"its attention uses attention sinks ({names}), which llmctl's attention op lacks")
    if features["mask"]:
        names = ", ".join(sorted(features["mask"]))
        verb = "reads" if len(features["mask"]) == 1 else "read"
        reasons.append(f"{names} {verb} the attention mask itself, which llmctl does not build")
    return joined(*reasons)


def base_model_blocker(source: str, architecture: str) -> str | None:
    """The causal-LM class sets its base model under another name than its base_model_prefix (Llama4ForCausalLM)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    node = classes.get(architecture)
    if node is None:
        return None
    prefix, cls = None, node
    while cls is not None and prefix is None:
        prefix = next(filter(None, (_str_assign(s, "base_model_prefix") for s in cls.body)), None)
        parent = next((b.id for b in cls.bases if isinstance(b, ast.Name) and b.id in classes), None)
        cls = classes.get(parent) if parent else None
    init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
    if not prefix or init is None:
        return None
    assigned = {t.attr for s in ast.walk(init) if isinstance(s, ast.Assign) for t in s.targets
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}  # fmt: skip
    if prefix not in assigned:
        return NO_BASE_REASON.format(architecture=architecture)
    return None



def _str_assign(stmt: ast.stmt, name: str) -> str | None:
    if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
        if isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            return stmt.value.value
    return None


def static_blocker(source: str, architecture: str, config: dict[str, Any] | None) -> str | None:
    """Why the backend cannot run `architecture` with this config.json, from its modeling source; None when it can."""
    config = config if isinstance(config, dict) else {}
    types = layer_types(config)
    return joined(
        layer_types_blocker(types) if types else None,
        features_blocker(class_features(source), types),
        value_head_blocker(config),
        base_model_blocker(source, architecture),
    )
