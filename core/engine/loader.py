"""Stream checkpoint tensors into a model definition: safetensors / .bin iterators, fused-shard loading, dummy weights."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from llmctl.core.errors import ModelReadError, WeightLoadError

def _files_from_index(model_dir: Path, index_name: str) -> list[Path]:
    try:
        index = json.loads((model_dir / index_name).read_text())
        names = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelReadError(f"cannot read {model_dir / index_name}: {exc}") from exc
    return [model_dir / name for name in names]


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The checkpoint's .safetensors files: those named by model.safetensors.index.json, else model.safetensors."""
    model_dir = Path(model_dir)
    if (model_dir / "model.safetensors.index.json").is_file():
        return _files_from_index(model_dir, "model.safetensors.index.json")
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    return sorted(model_dir.glob("*.safetensors"))


def iter_safetensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from the checkpoint's safetensors files, memory-mapped one tensor at a time."""
    from safetensors import safe_open

    files = safetensors_files(model_dir)
    if not files:
        raise ModelReadError(f"no .safetensors files in {model_dir}")
    for path in files:
        if not path.is_file():
            raise ModelReadError(f"checkpoint shard {path} is missing")
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError for corrupt headers
            raise ModelReadError(f"cannot read {path}: {exc}") from exc
        with handle as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def iter_torch_bin(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from pytorch_model*.bin files, loaded with weights_only=True and mmap."""
    model_dir = Path(model_dir)
    if (model_dir / "pytorch_model.bin.index.json").is_file():
        files = _files_from_index(model_dir, "pytorch_model.bin.index.json")
    else:
        files = sorted(model_dir.glob("pytorch_model*.bin"))
    if not files:
        raise ModelReadError(f"no pytorch_model*.bin files in {model_dir}")
    for path in files:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # unpickling errors, or a non-zip legacy file mmap cannot open
            raise ModelReadError(f"cannot read {path}: {exc}") from exc
        yield from state.items()
        del state


def iter_checkpoint(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """safetensors when the folder has them, else pytorch_model*.bin."""
    if safetensors_files(model_dir):
        return iter_safetensors(model_dir)
    return iter_torch_bin(model_dir)


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype) -> set[str]:
    """Copy checkpoint tensors into `model`, converting to `dtype`; returns the parameter names filled.

    Names go through the model's declared weights_mapper (model_defs/weights_mapper.py). Fused parameters
    (qkv_proj, gate_up_proj) are filled shard by shard through the owning module's shard_slice(). Raises WeightLoadError naming the tensor for unexpected names, shape mismatches, and
    parameters (or shards) that the checkpoint does not provide. A tied lm_head counts as loaded with
    the embedding; a checkpoint's redundant copy of it is accepted.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    canonical = {id(p): n for n, p in model.named_parameters()}  # tied aliases -> one name
    filled: dict[str, set] = {}  # canonical name -> shard ids loaded ({None} for plain params)
    mapper = model.weights_mapper
    for ckpt_name, tensor in weights:
        target = mapper.target(ckpt_name, params)
        if target is None:
            continue
        name, shard_id = target
        param = params.get(name)
        if param is None:
            raise WeightLoadError(
                f"unexpected tensor {ckpt_name!r} {tuple(tensor.shape)} in the checkpoint: "
                f"{type(model).__name__} has no parameter {name!r}"
            )
        dest = param.data
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        if shard_id is not None:
            start, size = module.shard_slice(shard_id)
            dest = dest.narrow(0, start, size)
        if hasattr(module, "from_checkpoint_layout"):
            # The layer stores this tensor in another layout in the checkpoint (GPT-2's Conv1D (in, out),
            # GPT-NeoX's per-head interleaved q/k/v) and turns it into its own.
            tensor = module.from_checkpoint_layout(name.rsplit(".", 1)[-1], tensor)
        if dest.is_floating_point() and not (tensor.is_floating_point() or tensor.is_complex()):
            raise WeightLoadError(  # an integer or bool tensor cast into float weights would run, and be garbage
                f"tensor {ckpt_name!r} is stored as {str(tensor.dtype).removeprefix('torch.')} but "
                f"{name!r} is a floating-point weight: the checkpoint is not one this model can load"
            )
        if tuple(dest.shape) != tuple(tensor.shape):
            raise WeightLoadError(
                f"tensor {ckpt_name!r} has shape {tuple(tensor.shape)} but the model expects {tuple(dest.shape)}"
            )
        with torch.no_grad():
            dest.copy_(tensor.to(dtype))
        filled.setdefault(canonical[id(param)], set()).add(shard_id)

    missing = []
    for name, _ in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        expected = set(module.shard_ids) if hasattr(module, "shard_slice") else {None}
        if None in filled.get(name, set()):
            continue  # the checkpoint stores this parameter fused already (Phi-3's qkv_proj, gate_up_proj)
        for shard_id in expected - filled.get(name, set()):
            missing.append(mapper.checkpoint_name(name, shard_id))
    if missing:
        missing = sorted(set(missing))  # a fused tensor stored whole is named once, not once per shard
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise WeightLoadError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs: {shown}")
    return set(filled)


@contextlib.contextmanager
def _params_on_meta():
    """Create parameters on the meta device (no memory, no init) while buffers stay real (rope caches)."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=False)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _materialize(model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Replace meta parameters with empty ones of `dtype` on `device`, keeping tied parameters shared."""
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in made:
                dtype_here = dtype if param.is_floating_point() else param.dtype
                made[id(param)] = nn.Parameter(torch.empty(param.shape, dtype=dtype_here, device=device), False)
            module._parameters[name] = made[id(param)]
    model.to(device)  # buffers


def _init_dummy(model: nn.Module, seed: int = 0) -> None:
    """Random weights of the right shapes: norms weight 1 and bias 0, the rest N(0, 0.02) (load_format="dummy")."""
    from llmctl.model_defs.layers.layernorm import LayerNorm
    from llmctl.model_defs.layers.norm import RMSNorm

    norms = [m for m in model.modules() if isinstance(m, (RMSNorm, LayerNorm, nn.LayerNorm))]
    norm_weights = {id(m.weight) for m in norms if getattr(m, "weight", None) is not None}
    norm_biases = {id(m.bias) for m in norms if getattr(m, "bias", None) is not None}
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for param in model.parameters():
            if id(param) in norm_weights or id(param) in norm_biases:
                param.fill_(1.0 if id(param) in norm_weights else 0.0)
                continue
            # Drawn where the parameter lives: an 8B model's weights take seconds on a GPU, a minute on a CPU.
            gen = generators.setdefault(param.device, torch.Generator(param.device).manual_seed(seed))
            param.normal_(0.0, 0.02, generator=gen)


def build_model(
    hf_config,
    model_cls: type[nn.Module],
    dtype: torch.dtype,
    device: torch.device | str,
    weights: Iterable[tuple[str, torch.Tensor]] | None,
) -> nn.Module:
    """Build `model_cls(hf_config)` in `dtype` on `device` and fill it from `weights` (None: dummy weights)."""
    device = torch.device(device)
    with _params_on_meta():
        model = model_cls(hf_config)
    _materialize(model, dtype, device)
    if weights is None:
        _init_dummy(model)
    else:
        load_weights(model, weights, dtype)
    return model.eval()
