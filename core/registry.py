"""The architecture registry: the single table of what llmctl runs, how, and how well it is verified.

Rows name their model_def by module and class strings, so looking one up never imports torch.
`level` is what the tests show: strict (greedy tokens and top-k logprobs match transformers),
sensible (a real checkpoint gives sensible output), runtime (loads and runs), none.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llmctl.core.errors import UnsupportedModelError

GENERATE = "generate"
EMBED = "embed"
CLASSIFY = "classify"  # cross-encoders and sequence classifiers (planned rows only so far)
TASKS = (GENERATE, EMBED, CLASSIFY)
KINDS = ("decoder-only", "moe", "hybrid", "attention-free", "multimodal", "encoder-only", "encoder-decoder")
LEVELS = ("strict", "sensible", "runtime", "none")
MODEL_IMPLS = ("auto", "native", "transformers")


@dataclass(frozen=True, slots=True)
class ArchInfo:
    architecture: str
    family: str
    tasks: tuple[str, ...]
    status: str = "planned"  # "native" once a model_def exists, else "planned"
    module: str | None = None  # e.g. "llmctl.model_defs.llama"
    class_name: str | None = None
    level: str = "none"
    needs_remote_code: bool = False
    kind: str = "decoder-only"

    def __post_init__(self) -> None:
        if self.status not in ("native", "planned"):
            raise ValueError(f"{self.architecture}: status must be native or planned")
        if self.status == "native" and not (self.module and self.class_name):
            raise ValueError(f"{self.architecture}: a native row names its module and class")
        if self.level not in LEVELS:
            raise ValueError(f"{self.architecture}: level must be one of {LEVELS}")
        if self.status == "planned" and self.level != "none":
            raise ValueError(f"{self.architecture}: a planned row cannot claim verification")
        if not self.tasks or not set(self.tasks) <= set(TASKS) or self.kind not in KINDS:
            raise ValueError(f"{self.architecture}: tasks must be among {TASKS} and kind one of {KINDS}")


def _native(arch: str, family: str, module: str, level: str, tasks=(GENERATE,), **kw) -> ArchInfo:
    return ArchInfo(arch, family, tuple(tasks), "native", f"llmctl.model_defs.{module}", arch, level, **kw)


def _planned(arch: str, family: str, tasks=(GENERATE,), **kw) -> ArchInfo:
    return ArchInfo(arch, family, tuple(tasks), **kw)


# Native rows; the planned ones (every other architecture on the list) are in core/registry_planned.py.
_NATIVE_ROWS: tuple[ArchInfo, ...] = (
    # Llama family (Llama, Llama 2, Llama 3/3.1/3.2, Yi, SmolLM2 all use LlamaForCausalLM)
    _native("LlamaForCausalLM", "llama", "llama", "strict"),
    _native("MistralForCausalLM", "llama", "llama", "strict"),
    _native("Qwen2ForCausalLM", "llama", "llama", "strict"),
    _native("Qwen3ForCausalLM", "llama", "llama", "strict"),
    _native("Olmo2ForCausalLM", "olmo2", "olmo2", "strict"),  # the Llama decoder with post-norms
    _native("GraniteForCausalLM", "granite", "granite", "strict"),  # the Llama decoder with scalar multipliers
    # InternLM / InternLM2: the Llama decoder; hub repos ship remote code, which llmctl does not need
    _native("InternLMForCausalLM", "internlm", "internlm", "strict"),
    _native("InternLM2ForCausalLM", "internlm2", "internlm", "strict"),
    # GLM: the Llama decoder with interleaved half-head rope; ChatGLM2/3 and GLM-4 repos are it under other names
    _native("GlmForCausalLM", "glm", "glm", "strict"),
    _native("Glm4ForCausalLM", "glm4", "glm", "strict"),  # GLM with sandwich norms
    _native("ChatGLMModel", "chatglm", "glm", "strict"),
    _native("ChatGLMForConditionalGeneration", "chatglm", "glm", "strict"),
    # Dense decoders
    _native("GemmaForCausalLM", "gemma", "gemma", "strict"),
    _native("Gemma2ForCausalLM", "gemma2", "gemma", "strict"),
    _native("Gemma3ForCausalLM", "gemma3", "gemma", "strict"),
    _native("GPT2LMHeadModel", "gpt2", "gpt2", "strict"),
    _native("GPTJForCausalLM", "gptj", "gptj", "strict"),
    _native("GPTNeoXForCausalLM", "gpt_neox", "gpt_neox", "strict"),
    _native("OPTForCausalLM", "opt", "opt", "strict"),
    _native("BloomForCausalLM", "bloom", "bloom", "strict"),
    _native("FalconForCausalLM", "falcon", "falcon", "strict"),
    _native("MPTForCausalLM", "mpt", "mpt", "strict"),
    _native("MptForCausalLM", "mpt", "mpt", "strict"),  # the spelling transformers writes when it saves
    _native("PhiForCausalLM", "phi", "phi", "strict"),
    _native("Phi3ForCausalLM", "phi3", "phi3", "strict"),
    _native("Starcoder2ForCausalLM", "starcoder2", "starcoder2", "strict"),
    _native("QWenLMHeadModel", "qwen", "qwen", "strict"),  # Qwen v1: its repo's code is not needed
    # Baichuan ships remote code; its checkpoints run natively (Llama's decoder with W_pack, ALiBi at 13B)
    _native("BaiChuanForCausalLM", "baichuan", "baichuan", "strict"),  # Baichuan-7B
    _native("BaichuanForCausalLM", "baichuan", "baichuan", "strict"),  # Baichuan-13B, Baichuan2-7B / 13B
    # Embedding models
    _native("BertModel", "bert", "bert", "strict", tasks=(EMBED,), kind="encoder-only"),
    _native("XLMRobertaModel", "xlm_roberta", "bert", "strict", tasks=(EMBED,), kind="encoder-only"),
    _native("MistralModel", "llama", "llama_embed", "strict", tasks=(EMBED,)),
    _native("LlamaModel", "llama", "llama_embed", "strict", tasks=(EMBED,)),
    _native("Qwen3Model", "llama", "llama_embed", "strict", tasks=(EMBED,)),
)


def _planned_rows() -> list[ArchInfo]:
    from llmctl.core.registry_planned import PLANNED

    rows = []
    for line in PLANNED.strip().splitlines():
        arch, family, tasks, kind, *flags = line.split()
        rows.append(_planned(arch, family, tasks=tasks.split("+"), kind=kind, needs_remote_code="remote" in flags))
    return rows


@lru_cache(maxsize=1)
def _registry() -> dict[str, ArchInfo]:
    """architecture -> row, native rows first; built on first use so importing the registry stays instant."""
    table: dict[str, ArchInfo] = {}
    for row in (*_NATIVE_ROWS, *_planned_rows()):
        if row.architecture in table:
            raise ValueError(f"{row.architecture} has two registry rows")
        table[row.architecture] = row
    return table


# Architectures run through the transformers backend, at the level its tests show (the same LEVELS): strict
# where tests/models/test_check_truth.py (tiny checkpoints of tests/models/backend_cases.py) or
# test_transformers_backend.py holds greedy tokens and top-5 logprobs to transformers'. Others: "none".
TRANSFORMERS_VERIFIED: dict[str, str] = dict.fromkeys((
    "AfmoeForCausalLM", "ApertusForCausalLM", "ArceeForCausalLM", "Cohere2ForCausalLM", "CohereForCausalLM",
    "CwmForCausalLM", "DbrxForCausalLM", "Dots1ForCausalLM", "Ernie4_5ForCausalLM", "Ernie4_5_MoeForCausalLM",
    "Exaone4ForCausalLM", "FlexOlmoForCausalLM", "GPTBigCodeForCausalLM", "Gemma3nForCausalLM",
    "Glm4MoeForCausalLM", "GraniteMoeForCausalLM", "GraniteMoeSharedForCausalLM",
    "HunYuanDenseV1ForCausalLM", "HunYuanMoEV1ForCausalLM", "Jais2ForCausalLM", "MiniCPM3ForCausalLM",
    "MiniMaxM2ForCausalLM", "MixtralForCausalLM", "NemotronForCausalLM", "Olmo3ForCausalLM", "OlmoForCausalLM",
    "OlmoeForCausalLM", "PersimmonForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "SeedOssForCausalLM",
    "SmolLM3ForCausalLM",
), "strict")  # fmt: skip


def all_architectures() -> list[ArchInfo]:
    return list(_registry().values())


def lookup(architecture: str) -> ArchInfo | None:
    return _registry().get(architecture)


def get_arch(architecture: str) -> ArchInfo:
    """The row for `architecture`, or an error naming what is supported and the nearest match."""
    row = lookup(architecture)
    if row is not None:
        return row
    native = sorted(r.architecture for r in _NATIVE_ROWS)
    near = difflib.get_close_matches(architecture, list(_registry()), n=1)
    hint = f"nearest known architecture: {near[0]}; " if near else ""
    raise UnsupportedModelError(
        f"architecture {architecture!r} is not in llmctl's registry",
        hint=f"{hint}native today: {', '.join(native)}; `llmctl check MODEL` shows what else is possible",
    )


def nearest_native(architecture: str) -> str | None:
    native = [r.architecture for r in _NATIVE_ROWS]
    near = difflib.get_close_matches(architecture, native, n=1, cutoff=0.5)
    return near[0] if near else None


@lru_cache(maxsize=1)
def _transformers_models_dir() -> Path | None:
    """transformers' models/ folder, found without importing transformers."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@lru_cache(maxsize=64)
def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _transformers_auto_text() -> str:
    models = _transformers_models_dir()
    return _read(models / "auto" / "modeling_auto.py") if models is not None else ""


def transformers_has(architecture: str) -> bool:
    """Whether the installed transformers ships a class for `architecture` (read from its source, not imported)."""
    return f'"{architecture}"' in _transformers_auto_text()


def _causal_lm_names() -> str:
    """The text of modeling_auto.py's MODEL_FOR_CAUSAL_LM_MAPPING_NAMES: what AutoModelForCausalLM can build."""
    text = _transformers_auto_text()
    start = text.find("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES = ")
    if start < 0:
        return ""
    end = text.find("\n)", start)
    return text[start : end if end > 0 else len(text)]


def _modeling_source(architecture: str, model_type: str | None) -> str:
    """The source of the modeling file that defines `class <architecture>(`, or "" when none does."""
    models = _transformers_models_dir()
    if models is None:
        return ""
    needle = f"class {architecture}("
    folders = [model_type, model_type.removesuffix("_text")] if model_type else []
    for folder in filter(None, folders):
        text = _read(models / folder / f"modeling_{folder}.py")
        if needle in text:
            return text
    for path in sorted(models.glob("*/modeling_*.py")):  # a model_type that is not its folder's name
        text = _read(path)
        if needle in text:
            return text
    return ""


def transformers_backend_blocker(
    architecture: str, model_type: str | None = None, config: dict | None = None
) -> str | None:
    """Why the transformers backend cannot run `architecture`, or None when it can (source text only, no import).

    It can when transformers builds the class as a causal LM, the class routes attention through
    transformers' AttentionInterface (`_supports_attention_backend = True`), where llmctl's attention plugs in,
    and nothing in its layers needs what llmctl's attention and KV cache lack (core/backend_features.py;
    `config`, the config.json dict, says which layers the model builds).
    """
    if _transformers_models_dir() is None:
        return "transformers is not installed"
    if f'"{architecture}"' not in _causal_lm_names():
        if transformers_has(architecture):
            return f"transformers has {architecture}, but not as a text-generation (causal LM) model"
        return f"the installed transformers has no class {architecture}"
    source = _modeling_source(architecture, model_type)
    if "_supports_attention_backend = True" not in source:
        return (
            f"transformers' {architecture} does not route attention through its attention interface, "
            "so llmctl's paged attention cannot serve it"
        )
    from llmctl.core.backend_features import static_blocker

    return static_blocker(source, architecture, config)


def implementation_for(
    architecture: str,
    model_impl: str = "auto",
    *,
    model_type: str | None = None,
    task: str = GENERATE,
    remote_code: bool = False,
    trust_remote_code: bool = False,
    config: dict | None = None,
) -> str:
    """"native" or "transformers": which implementation runs `architecture` for model_impl auto | native | transformers.

    auto: the native def when the registry has one, else the transformers backend when transformers
    can build the architecture as a causal LM (or the repo's own code, with trust_remote_code).
    Raises UnsupportedModelError saying why neither can, and what to try.
    """
    if model_impl not in MODEL_IMPLS:
        raise UnsupportedModelError(
            f"model_impl={model_impl!r} is not available", hint=f"use one of {', '.join(MODEL_IMPLS)}"
        )
    row = lookup(architecture)
    if row is not None and task not in row.tasks:
        raise UnsupportedModelError(
            f"{architecture} supports task(s) {', '.join(row.tasks)}, not {task}",
            hint="use task='embed' / `llmctl embed` for embedding models" if EMBED in row.tasks else None,
        )
    if row is not None and row.status == "native" and model_impl != "transformers":
        return "native"
    if model_impl == "native":
        can = not remote_code and transformers_backend_blocker(architecture, model_type, config) is None
        raise UnsupportedModelError(
            f"{architecture} has no native model definition in llmctl",
            hint="model_impl='auto' or 'transformers' runs it through the transformers backend" if can else None,
        )
    if task != GENERATE:
        raise UnsupportedModelError(f"the transformers backend runs text generation only, not {task}")
    if remote_code:
        if trust_remote_code:
            return "transformers"
        raise UnsupportedModelError(
            f"{architecture} needs code from its repo",
            hint="pass trust_remote_code=True (--trust-remote-code) if you trust it",
        )
    blocker = transformers_backend_blocker(architecture, model_type, config)
    if blocker is not None:
        if model_impl == "transformers":
            raise UnsupportedModelError(f"{architecture} cannot run through the transformers backend: {blocker}")
        if row is None and not transformers_has(architecture):
            get_arch(architecture)  # raises the registry's error: what is native, the nearest match
        raise UnsupportedModelError(
            f"{architecture} has no native model definition in llmctl yet, and the transformers backend "
            f"cannot run it: {blocker}"
        )
    return "transformers"


def load_model_class(row: ArchInfo):
    """Import the model_def class of a native row (compute path only)."""
    if row.status != "native":
        raise UnsupportedModelError(f"{row.architecture} has no native model definition in llmctl yet")
    import importlib

    module = importlib.import_module(row.module)
    return getattr(module, row.class_name)
