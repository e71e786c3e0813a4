"""The strict-consistency harness of tests/models (loaded by path: not a test module).

Tiny random checkpoints written the way hub checkpoints store them, transformers (eager, float32) and llmctl
loaders, a paged-KV driver standing in for the engine, transformers' reference logits and greedy runs, and the
checks: packed prefill logits, chunked prefill, greedy decode under the top-5 rule.
"""

# No `from __future__ import annotations`: this module is loaded by path, outside sys.modules, where
# dataclasses cannot resolve string annotations.

import importlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmctl.model_defs.layers.context import AttentionMetadata, ForwardContext

# Mixed lengths: the longest past every sliding window the cases use (6 / 7), one of a single token.
PROMPTS = [
    [11, 250, 7, 99, 3, 180, 42, 42, 5, 77, 123, 9, 300, 18, 64, 2, 201, 55, 8],
    [17],
    [4, 90, 260, 33, 71, 12, 150, 6, 19, 48, 222],
    [301, 2, 88, 140, 5],
]
MAX_NEW_TOKENS = 8
# float32 on CPU: both sides run the same math in another order (packed einsum vs batched matmul, fused
# qkv / gate_up, ALiBi as slope * (key - query) vs slope * key, softmax over the paged context), so logits of
# size ~1-10 differ by a few ulps; 1e-4 leaves room for that and nothing more (a wrong scale, window or norm
# moves them by > 1e-2).
TOL = dict(atol=1e-4, rtol=1e-4)
TOP_K = 5  # vLLM's rule: where greedy tokens diverge, each side's token is in the other's top-5


# --- checkpoints and loaders ----------------------------------------------------------------------------------


def write_checkpoint(name: str, case, out_dir: Path, hub_style: bool = True) -> Path:
    """Save case's tiny random float32 model (seeded by name); with hub_style, config.json then loses case.drop
    and takes case.hub_keys, else it stays as transformers 5 writes it."""
    import transformers

    torch.manual_seed(sum(map(ord, name)))
    config = getattr(transformers, case.config_class)(**case.kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # HF init leaves biases 0 and norms 1 (Gemma: 0): perturb so that each weight matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if hub_style:
        path = out_dir / "config.json"
        data = json.loads(path.read_text())
        data["torch_dtype"] = data.pop("dtype", None) or "float32"  # transformers 5 writes `dtype`
        for key in case.drop:
            data.pop(key, None)
        data.update(case.hub_keys)
        path.write_text(json.dumps(data, indent=2))
    return out_dir


def load_hf(path: Path, attn_implementation: str = "eager"):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=attn_implementation
    )
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def model_class(config):
    """The llmctl class the registry maps config.architectures[0] to (what LLM loads)."""
    from llmctl.core.registry import get_arch, load_model_class

    return load_model_class(get_arch(config.architectures[0]))


def family(model_or_class):
    """The model_defs module of a model (its constants)."""
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    return importlib.import_module(cls.__module__)


def load_ours(path: Path):
    """(llmctl model in float32 on CPU, its config as the engine reads it) from a checkpoint folder."""
    from llmctl.core.engine.loader import build_model, iter_safetensors
    from llmctl.core.engine.model_source import load_hf_config

    config = load_hf_config(path)
    return build_model(config, model_class(config), torch.float32, "cpu", iter_safetensors(path)), config


def _remote_layouts():
    spec = importlib.util.spec_from_file_location("remote_layouts", Path(__file__).with_name("remote_layouts.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the paged driver -----------------------------------------------------------------------------------------


@dataclass
class Seq:
    tokens: list[int]
    prompt_len: int
    computed: int = 0
    blocks: list[int] = field(default_factory=list)
    logprobs: list[torch.Tensor] = field(default_factory=list)  # one (V,) float32 per generated token


def context_for(n: int) -> ForwardContext:
    """Metadata for one prompt of n tokens attended within itself (no KV cache)."""
    return ForwardContext(
        AttentionMetadata(
            query_start_loc=torch.tensor([0, n], dtype=torch.int32),
            seq_lens=torch.tensor([n], dtype=torch.int32),
            slot_mapping=torch.arange(n),
            block_tables=torch.zeros(1, 1, dtype=torch.int32),
            max_query_len=n,
            max_seq_len=n,
        )
    )


def one_shot_logits(model, prompt: list[int]) -> torch.Tensor:
    """(len, V) float32 logits of one prompt, without a cache."""
    with torch.inference_mode():
        hidden = model(torch.tensor(prompt), torch.arange(len(prompt)), context_for(len(prompt)))
        return model.compute_logits(hidden).float()


class PagedDriver:
    """A minimal stand-in for the engine: packs sequences, allocates shuffled KV blocks, builds metadata."""

    def __init__(self, model, config, num_blocks: int = 96, block_size: int = 4, use_cache: bool = True):
        num_layers, num_kv_heads, head_dim = model.kv_cache_shape()
        self.model = model
        self.block_size = block_size
        self.device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
        self.kv_caches = (
            [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)] if use_cache else None
        )
        # Shuffled so that a sequence's blocks are not contiguous in the cache.
        self.free = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0)).tolist()

    def forward(self, batch: list[tuple[Seq, int]]) -> torch.Tensor:
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

    def logits(self, batch: list[tuple[Seq, int]]) -> torch.Tensor:
        """(T, V) float32 logits of every token of the packed batch."""
        hidden = self.forward(batch)
        with torch.inference_mode():
            return self.model.compute_logits(hidden).float()

    def greedy(self, prompts: list[list[int]], max_new_tokens: int, chunk_size: int | None = None) -> list[Seq]:
        """Continuous-batching greedy decode; with chunk_size, prompts prefill in chunks beside others' decodes."""
        seqs = [Seq(tokens=list(p), prompt_len=len(p)) for p in prompts]
        while active := [s for s in seqs if len(s.tokens) - s.prompt_len < max_new_tokens]:
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
        return seqs

    @staticmethod
    def _ends(batch) -> list[int]:
        ends, total = [], 0
        for _, n in batch:
            total += n
            ends.append(total)
        return ends


# --- transformers' reference and the comparisons --------------------------------------------------------------


def hf_logits(hf, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([prompt])).logits[0].float()  # (len, V)


def hf_greedy(hf, prompt: list[int], max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[list[int], list[torch.Tensor]]:
    """transformers' greedy tokens and the (V,) logprobs of each step."""
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    return tokens, [torch.log_softmax(step[0].float(), dim=-1) for step in out.logits]


def check_greedy_close(ours: Seq, hf_tokens: list[int], hf_logprobs: list[torch.Tensor], k: int = TOP_K) -> None:
    """Tokens must match; at the first divergence each side's token must be in the other's top-k (vLLM's rule)."""
    ours_tokens = ours.tokens[ours.prompt_len :]
    assert len(ours_tokens) == len(hf_tokens) == MAX_NEW_TOKENS
    for step, (a, b) in enumerate(zip(ours_tokens, hf_tokens)):
        if a != b:
            assert a in hf_logprobs[step].topk(k).indices.tolist(), f"step {step}: our {a} not in HF top-{k}"
            assert b in ours.logprobs[step].topk(k).indices.tolist(), f"step {step}: HF {b} not in our top-{k}"
            return


def check_completion_close(completion, hf_tokens: list[int], hf_logprobs: list[torch.Tensor]) -> None:
    """The same rule for an LLM.generate completion, through its own top-k logprobs (SamplingParams(logprobs=k))."""
    assert len(completion.token_ids) == len(hf_tokens) == MAX_NEW_TOKENS
    for step, (a, b) in enumerate(zip(completion.token_ids, hf_tokens)):
        if a != b:
            assert a in hf_logprobs[step].topk(TOP_K).indices.tolist(), f"step {step}: our {a} not in HF top-k"
            assert b in completion.logprobs[step], f"step {step}: HF {b} not in our top-k"
            return


class Bench:
    """The cases' checkpoints, (transformers, llmctl) pairs and transformers' greedy runs, each built once;
    and the strict checks, each for one case name."""

    def __init__(self, cases: dict, tmp_path_factory):
        self.cases = cases
        self.tmp = tmp_path_factory
        self.paths: dict[tuple[str, bool], Path] = {}
        self.hf_models: dict[Path, object] = {}
        self.ours: dict[str, tuple] = {}
        self.greedy_memo: dict[tuple[Path, tuple[int, ...]], tuple] = {}
        self.logits_memo: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def checkpoint(self, name: str, hub_style: bool = True) -> Path:
        """The case's folder; hub_style=False: the same weights, config.json as transformers 5 saves it (a case
        whose hub file differs only in torch_dtype / dtype, which llmctl does not read here, has one folder)."""
        case = self.cases[name]
        hub_style = hub_style or not (case.drop or case.hub_keys) or case.layout is not None
        if (name, hub_style) not in self.paths:
            if case.layout is not None:  # the reference, then its rewrite into the family's hub layout
                reference = self.reference(name)
                out = _remote_layouts().rewrite(case.layout, reference, self.tmp.mktemp(name), case.layout_keys)
            else:
                out = self.tmp.mktemp(name if hub_style else f"{name}-as-saved")
                out = write_checkpoint(name, case, out, hub_style)
            self.paths[name, hub_style] = out
        return self.paths[name, hub_style]

    def reference(self, name: str, hub_style: bool = True) -> Path:
        """The checkpoint transformers loads: the case's own, or for a rewritten case the one it was rewritten from."""
        if self.cases[name].layout is None:
            return self.checkpoint(name, hub_style)
        if (name, "reference") not in self.paths:
            out = self.tmp.mktemp(f"{name}-reference")
            self.paths[name, "reference"] = write_checkpoint(name, self.cases[name], out)
        return self.paths[name, "reference"]

    def architecture(self, name: str) -> str:
        """The architecture string the case's config.json names."""
        return json.loads((self.checkpoint(name) / "config.json").read_text())["architectures"][0]

    def hf(self, name: str, hub_style: bool = True):
        """transformers' model of checkpoint(name, hub_style)."""
        path = self.reference(name, hub_style)
        if path not in self.hf_models:
            self.hf_models[path] = load_hf(path, self.cases[name].hf_attention)
        return self.hf_models[path]

    def pair(self, name: str):
        """(transformers model, llmctl model, transformers config) of the hub-style checkpoint."""
        if name not in self.ours:
            self.ours[name] = load_ours(self.checkpoint(name))
        return (self.hf(name), *self.ours[name])

    def hf_greedy(self, name: str, prompt: list[int], hub_style: bool = True):
        key = (self.checkpoint(name, hub_style), tuple(prompt))
        if key not in self.greedy_memo:
            self.greedy_memo[key] = hf_greedy(self.hf(name, hub_style), prompt)
        return self.greedy_memo[key]

    def hf_logits(self, name: str, prompt: list[int]) -> torch.Tensor:
        key = (name, tuple(prompt))
        if key not in self.logits_memo:
            self.logits_memo[key] = hf_logits(self.hf(name), prompt)
        return self.logits_memo[key]

    def check_prefill(self, name: str, use_cache: bool, model=None) -> None:
        """All prompts in one packed batch (through the paged cache or not): logits equal transformers' per prompt."""
        _, ours, config = self.pair(name)
        driver = PagedDriver(model or ours, config, use_cache=use_cache)
        logits = driver.logits([(Seq(tokens=list(p), prompt_len=len(p)), len(p)) for p in PROMPTS])
        start = 0
        for prompt in PROMPTS:
            torch.testing.assert_close(logits[start : start + len(prompt)], self.hf_logits(name, prompt), **TOL)
            start += len(prompt)

    def check_chunked_prefill(self, name: str, chunk: int = 3) -> None:
        """Prompts prefilled `chunk` tokens a step, all in one batch: every position's logits equal transformers'."""
        _, ours, config = self.pair(name)
        driver = PagedDriver(ours, config, block_size=4)
        seqs = [Seq(tokens=list(p), prompt_len=len(p)) for p in PROMPTS]
        collected = {id(s): [] for s in seqs}
        while active := [s for s in seqs if s.computed < len(s.tokens)]:
            batch = [(s, min(chunk, len(s.tokens) - s.computed)) for s in active]
            logits = driver.logits(batch)
            start = 0
            for seq, n in batch:
                collected[id(seq)].append(logits[start : start + n])
                start += n
        for seq in seqs:
            torch.testing.assert_close(torch.cat(collected[id(seq)]), self.hf_logits(name, seq.tokens), **TOL)

    def check_greedy(self, name: str, chunk_size: int | None) -> None:
        """Continuous-batching greedy decode through the paged cache against transformers' generate (top-5 rule)."""
        _, ours, config = self.pair(name)
        seqs = PagedDriver(ours, config, block_size=4).greedy(PROMPTS, MAX_NEW_TOKENS, chunk_size=chunk_size)
        for seq, prompt in zip(seqs, PROMPTS):
            check_greedy_close(seq, *self.hf_greedy(name, prompt))

    def check_dummy_weights(self, name: str) -> None:
        """load_format="dummy": random weights (norms at 1) give finite, non-constant logits through the cache."""
        from llmctl.core.engine.loader import build_model

        _, _, config = self.pair(name)
        model = build_model(config, model_class(config), torch.float32, "cpu", None)
        for module in model.modules():
            if type(module).__name__.endswith("LayerNorm") or type(module).__name__ == "RMSNorm":
                assert module.weight is None or torch.all(module.weight == 1.0)
        prompt = PROMPTS[0]
        logits = PagedDriver(model, config).logits([(Seq(tokens=list(prompt), prompt_len=len(prompt)), len(prompt))])
        assert torch.isfinite(logits).all() and logits.std() > 0

    def kv_cache_shape(self, name: str) -> tuple[int, int, int]:
        """The cache layout the built model's attention layers need; the engine's kv_cache_spec sizes the same."""
        from llmctl.core.engine.kv_cache import kv_cache_spec

        _, ours, _ = self.pair(name)
        shape = ours.kv_cache_shape()
        spec = kv_cache_spec(ours, torch.float32)
        assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == shape
        return shape
