"""Checkpoint tensor name -> model parameter name: one declared mapper per model class (vLLM's WeightsMapper)."""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field

# Tensors no llmctl model keeps as a parameter: old Llama / NeoX checkpoints saved the rotary inv_freq buffer.
ALWAYS_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# The HF names of separate q/k/v and gate/up projections -> the fused QKVLinear / GatedMLP parameters.
QKV_PACKED = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v")}
QKV_GATE_UP_PACKED = {**QKV_PACKED, "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


@dataclass(frozen=True)
class WeightsMapper:
    """How a checkpoint's names reach the model's, applied in this order:

    strip_prefixes: the first that starts the name is removed (embedding checkpoints saved from *ForMaskedLM:
        "bert.", "roberta."; decoder backbones saved from *ForCausalLM: "model.").
    ignored_prefixes / ignored_suffixes: tensors that are not weights of ours (heads, mask buffers): skipped.
    renamed_prefixes / renamed_suffixes: old names (ChatGLM's transformer.encoder.layers.; TF-era LayerNorm.gamma /
        beta) -> the model's.
    base_prefix: tried in front of a name the model lacks: checkpoints saved from the bare base model
        (the hub's original gpt2, bigscience/bloom, facebook/opt) have no "transformer." / "model.".
    packed: checkpoint module name -> (fused parameter's module name, shard id), the stacked q/k/v and
        gate/up projections; the owning module's shard_slice(shard id) places the tensor.
    """

    strip_prefixes: tuple[str, ...] = ()
    ignored_prefixes: tuple[str, ...] = ()
    ignored_suffixes: tuple[str, ...] = ()
    renamed_prefixes: Mapping[str, str] = field(default_factory=dict)
    renamed_suffixes: Mapping[str, str] = field(default_factory=dict)
    base_prefix: str | None = None
    packed: Mapping[str, tuple[str, object]] = field(default_factory=dict)

    def ignores(self, name: str) -> bool:
        """True for a (prefix-stripped) checkpoint name that is not a weight of the model."""
        return name.startswith(self.ignored_prefixes) or name.endswith(ALWAYS_IGNORED_SUFFIXES + self.ignored_suffixes)

    def strip(self, name: str) -> str:
        for prefix in self.strip_prefixes:
            if name.startswith(prefix):
                return name[len(prefix) :]
        return name

    def rename(self, name: str) -> str:
        for old, new in self.renamed_prefixes.items():
            if name.startswith(old):
                name = new + name[len(old) :]
        for old, new in self.renamed_suffixes.items():
            if name.endswith(old):
                name = name[: -len(old)] + new
        return name

    def unpack(self, name: str) -> tuple[str, object]:
        """(parameter name, shard id or None) of a renamed checkpoint name."""
        for ckpt_part, (param_part, shard_id) in self.packed.items():
            token = f".{ckpt_part}."
            if token in name:
                return name.replace(token, f".{param_part}.", 1), shard_id
        return name, None

    def target(self, name: str, params: Container[str]) -> tuple[str, object] | None:
        """(model parameter name, shard id or None) for checkpoint name `name`; None if it is to be skipped.

        `params` are the model's parameter names (base_prefix is added only when it makes the name one).
        """
        name = self.strip(name)
        if self.ignores(name):
            return None
        name = self.rename(name)
        found = self.unpack(name)
        if self.base_prefix and found[0] not in params and not name.startswith(self.base_prefix + "."):
            prefixed = self.unpack(f"{self.base_prefix}.{name}")
            if prefixed[0] in params:
                return prefixed
        return found

    def checkpoint_name(self, name: str, shard_id) -> str:
        """The checkpoint name that fills shard `shard_id` of parameter `name` (for messages: the inverse of target)."""
        if shard_id is None:
            return name
        module = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
        for old, new in self.renamed_suffixes.items():
            if name.endswith(new) and f".{module}." in new:  # the fused module is stored whole, renamed (W_pack)
                return name[: -len(new)] + old
        for ckpt_part, (param_part, shard) in self.packed.items():
            if shard == shard_id and f".{param_part}." in name:
                return name.replace(f".{param_part}.", f".{ckpt_part}.", 1)
        return f"{name} (shard {shard_id!r})"
