"""Tiny random Llama-family checkpoints (written the way hub checkpoints store them) and a paged-KV greedy driver."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from llmctl.model_defs.layers.context import AttentionMetadata, ForwardContext
from llmctl.model_defs.llama import kv_cache_shape

_BASE = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

# name -> (transformers config class name, config kwargs, hub-style rope keys written into config.json)
CASES: dict[str, tuple[str, dict, dict]] = {
    # Llama 3.1-style: llama3 rope scaling, head_dim (32) != hidden / heads (16), untied head.
    "llama3": (
        "LlamaConfig",
        dict(head_dim=32, tie_word_embeddings=False),
        dict(
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    # SmolLM2-style: tied embeddings, multi-query attention, plain rope.
    "llama_tied": (
        "LlamaConfig",
        dict(num_key_value_heads=1, tie_word_embeddings=True),
        dict(rope_theta=100000.0, rope_scaling=None),
    ),
    # Sliding window (7) shorter than the longer prompts.
    "mistral": ("MistralConfig", dict(sliding_window=7, tie_word_embeddings=False), dict(rope_theta=10000.0)),
    # q/k/v bias, tied embeddings.
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True), dict(rope_theta=1000000.0, rope_scaling=None)),
    # q_norm/k_norm, head_dim 32, layer 1 sliding (window 6) through use_sliding_window + max_window_layers.
    "qwen3": (
        "Qwen3Config",
        dict(head_dim=32, tie_word_embeddings=False, use_sliding_window=True, sliding_window=6, max_window_layers=1),
        dict(rope_theta=1000000.0, rope_scaling=None),
    ),
}


def _to_hub_style(config_path: Path, rope_keys: dict) -> None:
    """Rewrite a transformers-5 config.json the way hub checkpoints store it: rope_theta/rope_scaling, torch_dtype."""
    data = json.loads(config_path.read_text())
    data.pop("rope_parameters", None)
    data.update(rope_keys)
    data["torch_dtype"] = data.pop("dtype", None) or "float32"
    config_path.write_text(json.dumps(data, indent=2))


def make_checkpoint(name: str, out_dir: Path) -> Path:
    import transformers

    torch.manual_seed(sum(map(ord, name)))
    cls_name, kwargs, rope_keys = CASES[name]
    config = getattr(transformers, cls_name)(**{**_BASE, **kwargs})
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # HF init leaves biases 0 and norms 1: perturb everything so each weight matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    _to_hub_style(out_dir / "config.json", rope_keys)
    return out_dir


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(name) -> folder of a tiny random checkpoint, built once per session."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = make_checkpoint(name, tmp_path_factory.mktemp(name))
        return built[name]

    return get


def load_hf(path: Path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def load_ours(path: Path, device: str = "cpu"):
    import transformers

    from llmctl.core.engine.loader import build_model, iter_safetensors
    from llmctl.model_defs import llama

    config = transformers.AutoConfig.from_pretrained(path)
    model_cls = getattr(llama, config.architectures[0])
    return build_model(config, model_cls, torch.float32, device, iter_safetensors(path)), config


@dataclass
class _Seq:
    tokens: list[int]
    prompt_len: int
    computed: int = 0
    blocks: list[int] = field(default_factory=list)
    logprobs: list[torch.Tensor] = field(default_factory=list)  # one (V,) float32 per generated token


class PagedDriver:
    """A minimal stand-in for the engine: packs sequences, allocates shuffled KV blocks, builds metadata."""

    def __init__(self, model, config, num_blocks: int = 96, block_size: int = 4, use_cache: bool = True):
        num_layers, num_kv_heads, head_dim = kv_cache_shape(config)
        self.model = model
        self.block_size = block_size
        self.device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
        self.kv_caches = (
            [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
            if use_cache
            else None
        )
        # Shuffled so that a sequence's blocks are not contiguous in the cache.
        self.free = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0)).tolist()

    def forward(self, batch: list[tuple[_Seq, int]]) -> torch.Tensor:
        """Run n new tokens of each (seq, n); returns hidden states (T, H) of the packed batch."""
        ids, positions, slots, starts, seq_lens = [], [], [], [0], []
        for seq, n in batch:
            end = seq.computed + n
            while len(seq.blocks) * self.block_size < end:
                seq.blocks.append(self.free.pop())
            ids += seq.tokens[seq.computed : end]
            pos = list(range(seq.computed, end))
            positions += pos
            slots += [seq.blocks[p // self.block_size] * self.block_size + p % self.block_size for p in pos]
            starts.append(starts[-1] + n)
            seq_lens.append(end)
        width = max(len(seq.blocks) for seq, _ in batch)
        tables = [seq.blocks + [0] * (width - len(seq.blocks)) for seq, _ in batch]
        dev = self.device
        meta = AttentionMetadata(
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            max_query_len=max(n for _, n in batch),
            max_seq_len=max(seq_lens),
        )
        inputs = torch.tensor(ids, device=dev), torch.tensor(positions, device=dev)
        with torch.inference_mode():
            hidden = self.model(*inputs, ForwardContext(meta, self.kv_caches))
        for seq, n in batch:
            seq.computed += n
        return hidden

    def greedy(self, prompts: list[list[int]], max_new_tokens: int, chunk_size: int | None = None) -> list[_Seq]:
        """Continuous-batching greedy decode; with chunk_size, prompts prefill in chunks beside others' decodes."""
        seqs = [_Seq(tokens=list(p), prompt_len=len(p)) for p in prompts]
        while True:
            active = [s for s in seqs if len(s.tokens) - s.prompt_len < max_new_tokens]
            if not active:
                return seqs
            batch = []
            for seq in active:
                remaining = len(seq.tokens) - seq.computed
                batch.append((seq, remaining if chunk_size is None else min(remaining, chunk_size)))
            hidden = self.forward(batch)
            ends = torch.tensor(self._ends(batch), device=self.device)
            sampling = [i for i, (seq, _) in enumerate(batch) if seq.computed == len(seq.tokens)]
            if not sampling:
                continue
            with torch.inference_mode():
                logits = self.model.compute_logits(hidden[ends[sampling] - 1]).float().cpu()
            logprobs = torch.log_softmax(logits, dim=-1)
            for row, i in enumerate(sampling):
                seq = batch[i][0]
                seq.logprobs.append(logprobs[row])
                seq.tokens.append(int(logprobs[row].argmax()))

    @staticmethod
    def _ends(batch) -> list[int]:
        ends, total = [], 0
        for _, n in batch:
            total += n
            ends.append(total)
        return ends


@pytest.fixture(scope="session")
def model_pair(checkpoint):
    """model_pair(name) -> (transformers model, our model, hf config), loaded once per session."""
    loaded: dict[str, tuple] = {}

    def get(name: str):
        if name not in loaded:
            path = checkpoint(name)
            ours, config = load_ours(path)
            loaded[name] = (load_hf(path), ours, config)
        return loaded[name]

    return get


def pytest_generate_tests(metafunc):
    # Tests taking `arch` run once per tiny checkpoint.
    if "arch" in metafunc.fixturenames:
        metafunc.parametrize("arch", sorted(CASES))


@pytest.fixture(scope="session")
def kit():
    """The helpers test modules need (with --import-mode=importlib they cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(PagedDriver=PagedDriver, Seq=_Seq, CASES=CASES, load_ours=load_ours)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models are tiny: one thread avoids oversubscribing the shared 2-core CI box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
