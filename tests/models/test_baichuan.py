"""Baichuan / Baichuan2, native without the repos' remote code: what is held to what.

transformers has no Baichuan class, so:
- the rope variant (Baichuan-7B; Baichuan2-7B, BaichuanForCausalLM at hidden size 4096) is Llama with q|k|v
  fused into W_pack and multi-head attention: a tiny LlamaForCausalLM checkpoint rewritten into Baichuan's
  layout is held to transformers' Llama on the original (prefill with and without the paged cache, chunked
  prefill, greedy decode, LLM.generate);
- Baichuan2's NormHead (each lm_head row L2-normalised) is held to transformers' Llama whose lm_head rows were
  normalised, the function NormHead computes;
- the ALiBi variant (Baichuan-13B, Baichuan2-13B) is held to an independent plain-torch reference written here
  from the 13B remote modeling code (RMSNorm, W_pack, scores / sqrt(head_dim) + slope * key position under the
  causal mask, SwiGLU; slopes from its own _get_interleave recursion), the same checks and the top-5 rule.
BLOOM is no reference for it: LayerNorm, GELU and an embedding norm make it another function.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmctl.core.config_keys import baichuan_uses_alibi

# --import-mode=importlib and no __init__.py: the harness is loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

# Held to transformers' Llama (rope, NormHead) and to the torch reference below (ALiBi), token for token.
CONSISTENCY_ARCHITECTURES = ["BaiChuanForCausalLM", "BaichuanForCausalLM"]

BAICHUAN2_VOCAB = 125696
_REMOTE = {"AutoConfig": "configuration_baichuan.BaichuanConfig",
           "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}  # fmt: skip


def _llama(seed: int, vocab: int, hidden: int, heads: int, layers: int = 2):
    """A tiny random multi-head LlamaForCausalLM (float32), every weight perturbed away from its init."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=96,
                                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                      max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                      bos_token_id=None, eos_token_id=None, pad_token_id=None)  # fmt: skip
    model = transformers.LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _as_baichuan(llama, out: Path, architecture: str, hub: dict) -> dict[str, torch.Tensor]:
    """Write llama's weights the way Baichuan checkpoints store them (W_pack = cat(q, k, v)), config.json as the
    hub's (model_type baichuan, auto_map to the repo's code, no rope keys); returns the state written."""
    from safetensors.torch import save_file

    state = {}
    for name, tensor in llama.state_dict().items():
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        if ".self_attn.q_proj." in name:
            parts = [llama.state_dict()[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            name, tensor = name.replace("q_proj", "W_pack"), torch.cat(parts)
        state[name] = tensor.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    c = llama.config
    config = {"architectures": [architecture], "auto_map": _REMOTE, "model_type": "baichuan", "hidden_act": "silu",
              "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
              "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
              "rms_norm_eps": c.rms_norm_eps, "vocab_size": c.vocab_size, "tie_word_embeddings": False,
              "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **hub}  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return state


def _normalise_head(llama) -> None:
    with torch.no_grad():
        llama.lm_head.weight.copy_(F.normalize(llama.lm_head.weight, dim=-1))


# --- the independent ALiBi reference (Baichuan-13B's remote modeling code, in plain torch) -------------------


def _interleave(n: int) -> list[float]:
    """Baichuan-13B's _get_interleave: ALiBi slopes for n heads (the power-of-two ladder, then every other slope
    of the next power of two)."""
    if math.log2(n).is_integer():
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]
    closest = 2 ** math.floor(math.log2(n))
    return _interleave(closest) + _interleave(2 * closest)[0::2][: n - closest]


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _alibi_reference_logits(state: dict, config: dict, ids: list[int]) -> torch.Tensor:
    """(T, V) logits of one sequence, computed as the 13B remote code does, with no llmctl code."""
    hidden, heads, eps = config["hidden_size"], config["num_attention_heads"], config["rms_norm_eps"]
    hd, t = hidden // heads, len(ids)
    slopes = torch.tensor(_interleave(heads), dtype=torch.float32)
    bias = slopes[:, None, None] * torch.arange(t, dtype=torch.float32)[None, None, :]  # (nh, 1, T): slope * key pos
    causal = torch.full((t, t), float("-inf")).triu(1)  # (T, T)
    x = state["model.embed_tokens.weight"][torch.tensor(ids)]  # (T, H)
    for i in range(config["num_hidden_layers"]):
        w = {k.removeprefix(f"model.layers.{i}."): v for k, v in state.items() if k.startswith(f"model.layers.{i}.")}
        h = _rms(x, w["input_layernorm.weight"], eps)
        q, k, v = (h @ w["self_attn.W_pack.weight"].T).view(t, 3, heads, hd).permute(1, 2, 0, 3)  # 3 x (nh, T, hd)
        scores = q @ k.transpose(1, 2) / math.sqrt(hd) + bias + causal  # (nh, T, T)
        attn = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(t, hidden)
        x = x + attn @ w["self_attn.o_proj.weight"].T
        h = _rms(x, w["post_attention_layernorm.weight"], eps)
        gated = F.silu(h @ w["mlp.gate_proj.weight"].T) * (h @ w["mlp.up_proj.weight"].T)  # (T, I)
        x = x + gated @ w["mlp.down_proj.weight"].T
    head = state["lm_head.weight"]
    if config["vocab_size"] == BAICHUAN2_VOCAB:  # Baichuan2's NormHead
        head = F.normalize(head, dim=-1)
    return _rms(x, state["model.norm.weight"], eps) @ head.T


def _reference_greedy(state: dict, config: dict, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    tokens, logprobs = list(prompt), []
    for _ in range(harness.MAX_NEW_TOKENS):
        step = torch.log_softmax(_alibi_reference_logits(state, config, tokens)[-1], dim=-1)
        logprobs.append(step)
        tokens.append(int(step.argmax()))
    return tokens[len(prompt) :], logprobs


# --- the cases -------------------------------------------------------------------------------------------------


class _Case:
    """A Baichuan checkpoint and its reference: logits(prompt) -> (T, V), greedy(prompt) -> (tokens, logprobs)."""

    def __init__(self, path: Path, logits, greedy):
        self.path, self.logits, self.greedy = path, logits, greedy
        self._ours = None

    def ours(self):
        """(llmctl model, config) as LLM builds them: config.json read without the repo's config class."""
        from llmctl.core.engine.loader import build_model, iter_safetensors
        from llmctl.core.engine.model_source import load_hf_config, select_model_class

        if self._ours is None:
            config = load_hf_config(self.path)
            model = build_model(config, select_model_class(config), torch.float32, "cpu", iter_safetensors(self.path))
            self._ours = model, config
        return self._ours


def _llama_case(tmp: Path, seed: int, vocab: int) -> _Case:
    """Baichuan-7B (BaiChuanForCausalLM: rope) against transformers' Llama; Baichuan2's vocabulary adds NormHead."""
    llama = _llama(seed, vocab, hidden=64, heads=4)
    _as_baichuan(llama, tmp, "BaiChuanForCausalLM", {"max_position_embeddings": 256, "model_max_length": 256})
    if vocab == BAICHUAN2_VOCAB:
        _normalise_head(llama)  # the checkpoint keeps the raw head: the model must normalise it
    return _Case(tmp, lambda p: harness.hf_logits(llama, p), lambda p: harness.hf_greedy(llama, p))


def _baichuan2_7b_case(tmp: Path) -> _Case:
    """BaichuanForCausalLM at Baichuan2-7B's hidden size (4096, 32 heads of 128; one layer, a small vocabulary):
    the architecture string Baichuan-13B shares, on the rope side of the rule, held to transformers' Llama."""
    llama = _llama(4096, 320, hidden=4096, heads=32, layers=1)
    _as_baichuan(llama, tmp, "BaichuanForCausalLM", {"max_position_embeddings": 256, "model_max_length": 256})
    return _Case(tmp, lambda p: harness.hf_logits(llama, p), lambda p: harness.hf_greedy(llama, p))


def _alibi_case(tmp: Path, seed: int, vocab: int, heads: int) -> _Case:
    """Baichuan-13B / Baichuan2-13B (BaichuanForCausalLM at a hidden size other than 4096: ALiBi) against the
    torch reference; config.json as the 13B hub files write it (model_max_length, no max_position_embeddings)."""
    llama = _llama(seed, vocab, hidden=16 * heads, heads=heads)  # only a source of random weights here
    state = _as_baichuan(llama, tmp, "BaichuanForCausalLM", {"model_max_length": 256})
    config = json.loads((tmp / "config.json").read_text())
    return _Case(tmp, lambda p: _alibi_reference_logits(state, config, p),
                 lambda p: _reference_greedy(state, config, p))


_BUILDERS = {
    "baichuan_7b": lambda tmp: _llama_case(tmp, 7, 320),
    "baichuan2_normhead": lambda tmp: _llama_case(tmp, 8, BAICHUAN2_VOCAB),
    "baichuan_13b_6heads": lambda tmp: _alibi_case(tmp, 13, 320, heads=6),  # not a power of two: the extra slopes
    "baichuan2_13b": lambda tmp: _alibi_case(tmp, 14, BAICHUAN2_VOCAB, heads=4),
}
STRICT = list(_BUILDERS)
_BUILDERS["baichuan2_7b_shape"] = _baichuan2_7b_case  # 70M parameters: prefill checks only


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    built: dict[str, _Case] = {}

    def get(name: str) -> _Case:
        if name not in built:
            built[name] = _BUILDERS[name](tmp_path_factory.mktemp(name))
        return built[name]

    return get


@pytest.mark.parametrize("name", [*STRICT, "baichuan2_7b_shape"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["paged", "no-cache"])
def test_prefill_logits_match_reference(cases, name, use_cache):
    case = cases(name)
    ours, config = case.ours()
    logits = harness.PagedDriver(ours, config, use_cache=use_cache).logits(
        [(harness.Seq(tokens=list(p), prompt_len=len(p)), len(p)) for p in harness.PROMPTS]
    )
    start = 0
    for prompt in harness.PROMPTS:
        torch.testing.assert_close(logits[start : start + len(prompt)], case.logits(prompt), **harness.TOL)
        start += len(prompt)


@pytest.mark.parametrize("name", ["baichuan_7b", "baichuan_13b_6heads"])
def test_chunked_prefill_matches_reference(cases, name):
    case = cases(name)
    ours, config = case.ours()
    driver = harness.PagedDriver(ours, config, block_size=4)
    seqs = [harness.Seq(tokens=list(p), prompt_len=len(p)) for p in harness.PROMPTS]
    collected = {id(s): [] for s in seqs}
    while active := [s for s in seqs if s.computed < len(s.tokens)]:
        batch = [(s, min(3, len(s.tokens) - s.computed)) for s in active]
        logits, start = driver.logits(batch), 0
        for seq, n in batch:
            collected[id(seq)].append(logits[start : start + n])
            start += n
    for seq in seqs:
        torch.testing.assert_close(torch.cat(collected[id(seq)]), case.logits(seq.tokens), **harness.TOL)


@pytest.mark.parametrize("name", STRICT)
def test_greedy_matches_reference(cases, name):
    case = cases(name)
    ours, config = case.ours()
    seqs = harness.PagedDriver(ours, config, block_size=4).greedy(harness.PROMPTS, harness.MAX_NEW_TOKENS, 4)
    for seq, prompt in zip(seqs, harness.PROMPTS):
        harness.check_greedy_close(seq, *case.greedy(prompt))


@pytest.mark.parametrize("name", ["baichuan_7b", "baichuan_13b_6heads"])
def test_llm_generate_matches_reference(cases, name):
    """Through the registry and the engine, with token prompts and no tokenizer: no repo code is run."""
    from llmctl import LLM, SamplingParams

    case = cases(name)
    llm = LLM(str(case.path), dtype="float32", device="cpu", skip_tokenizer_init=True, max_model_len=64,
              block_size=4, max_num_batched_tokens=8, max_num_seqs=2, num_kv_blocks=64)  # fmt: skip
    assert llm.model_impl == "native"
    params = SamplingParams(temperature=0.0, max_tokens=harness.MAX_NEW_TOKENS, ignore_eos=True,
                            logprobs=harness.TOP_K)
    outs = llm.generate([{"prompt_token_ids": p} for p in harness.PROMPTS], params)
    for out, prompt in zip(outs, harness.PROMPTS):
        harness.check_completion_close(out.outputs[0], *case.greedy(prompt))


def test_variants_follow_the_config(cases):
    from llmctl.model_defs.baichuan import NormHead

    rope, _ = cases("baichuan_7b").ours()
    assert type(rope).__name__ == "BaiChuanForCausalLM" and type(rope.lm_head) is not NormHead
    assert all(layer.self_attn.rotary_emb is not None and layer.self_attn.attn.alibi_slopes is None
               for layer in rope.model.layers)  # fmt: skip
    alibi, _ = cases("baichuan_13b_6heads").ours()
    for layer in alibi.model.layers:
        assert layer.self_attn.rotary_emb is None
        torch.testing.assert_close(layer.self_attn.attn.alibi_slopes, torch.tensor(_interleave(6)))
    normed, _ = cases("baichuan2_13b").ours()
    assert isinstance(normed.lm_head, NormHead)
    torch.testing.assert_close(normed.lm_head.weight.norm(dim=-1), torch.ones(BAICHUAN2_VOCAB))


def test_position_encoding_rule():
    """vLLM's rule: BaichuanForCausalLM is rope at hidden size 4096 (Baichuan2-7B), ALiBi at any other (13B);
    BaiChuanForCausalLM (Baichuan-7B) is always rope."""
    from llmctl.model_defs.baichuan import BaichuanForCausalLM

    assert not baichuan_uses_alibi("BaichuanForCausalLM", 4096)
    assert baichuan_uses_alibi("BaichuanForCausalLM", 5120)
    assert not baichuan_uses_alibi("BaiChuanForCausalLM", 5120)
    from transformers import PretrainedConfig

    config = PretrainedConfig(vocab_size=BAICHUAN2_VOCAB, hidden_size=4096, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-6,
                              hidden_act="silu", tie_word_embeddings=False)  # Baichuan2-7B's shape, one layer
    with torch.device("meta"):
        model = BaichuanForCausalLM(config)
    attn = model.model.layers[0].self_attn
    assert attn.rotary_emb is not None and attn.attn.alibi_slopes is None
    assert type(model.lm_head).__name__ == "NormHead"


def test_a_tied_normalised_head_is_refused():
    from transformers import PretrainedConfig

    from llmctl.core.errors import UnsupportedModelError
    from llmctl.model_defs.baichuan import BaichuanForCausalLM

    config = PretrainedConfig(vocab_size=BAICHUAN2_VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6,
                              hidden_act="silu", tie_word_embeddings=True)  # fmt: skip
    with torch.device("meta"), pytest.raises(UnsupportedModelError, match="normalised head"):
        BaichuanForCausalLM(config)


def test_a_checkpoint_without_w_pack_is_refused(cases, tmp_path):
    from safetensors.torch import load_file

    from llmctl.core.engine.loader import load_weights
    from llmctl.core.errors import WeightLoadError
    from llmctl.model_defs.baichuan import BaiChuanForCausalLM

    path = cases("baichuan_7b").path
    _, config = cases("baichuan_7b").ours()
    state = load_file(str(path / "model.safetensors"))
    without = [(n, t) for n, t in state.items() if n != "model.layers.1.self_attn.W_pack.weight"]
    # named as the checkpoint stores it (once), not as the fused parameter's three shards
    with pytest.raises(WeightLoadError, match=r"lacks 1 tensor\(s\) the model needs: model.layers.1.self_attn.W_pack"):
        load_weights(BaiChuanForCausalLM(config), without, torch.float32)
    short = [(n, t[:10] if n == "model.layers.1.self_attn.W_pack.weight" else t) for n, t in state.items()]
    with pytest.raises(WeightLoadError, match=r"W_pack.weight' has shape \(10, 64\) but the model expects \(192, 64\)"):
        load_weights(BaiChuanForCausalLM(config), short, torch.float32)


# --- check and the tokenizer: native, no repo code ------------------------------------------------------------

_HUB = {  # the hub configs' shapes (config.json carries auto_map to the repo's code in each)
    "Baichuan-7B": ("BaiChuanForCausalLM", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                                num_attention_heads=32, vocab_size=64000,
                                                max_position_embeddings=4096), "rope"),
    "Baichuan-13B": ("BaichuanForCausalLM", dict(hidden_size=5120, intermediate_size=13696, num_hidden_layers=40,
                                                 num_attention_heads=40, vocab_size=64000, model_max_length=4096),
                     "alibi"),
    "Baichuan2-7B": ("BaichuanForCausalLM", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                                 num_attention_heads=32, vocab_size=BAICHUAN2_VOCAB,
                                                 max_position_embeddings=4096, model_max_length=4096), "rope"),
    "Baichuan2-13B": ("BaichuanForCausalLM", dict(hidden_size=5120, intermediate_size=13696, num_hidden_layers=40,
                                                  num_attention_heads=40, vocab_size=BAICHUAN2_VOCAB,
                                                  model_max_length=4096), "alibi"),
}  # fmt: skip


def _cli(*args):
    from typer.testing import CliRunner

    from llmctl.cli.app import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("name", list(_HUB))
def test_check_says_native_without_trust_remote_code(tmp_path, name):
    architecture, shape, position = _HUB[name]
    config = {"architectures": [architecture], "auto_map": _REMOTE, "model_type": "baichuan", "hidden_act": "silu",
              "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "torch_dtype": "bfloat16", **shape}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = _cli("check", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["implementation"] == "native" and data["needs_trust_remote_code"] is False
    assert data["verification"] == "strict" and data["supported"] is True
    arch = json.loads(_cli("inspect-arch", str(tmp_path), "--json").stdout)
    assert arch["position_embedding"] == position and arch["context_length"] == 4096
    h, i, n, v = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    # W_pack, o_proj, gate/up/down and two norms per layer; the final norm; embedding and untied head
    assert arch["num_parameters"] == n * (4 * h * h + 3 * h * i + 2 * h) + h + 2 * v * h
    assert arch["param_count_source"] == "config"


@pytest.mark.parametrize("name", STRICT)
def test_check_reads_what_the_model_builds(cases, name):
    """check's exact parameter count, KV-cache layout and position encoding, from config.json alone, are the
    built model's."""
    from llmctl.core.param_count import count
    from llmctl.core.spec import spec_from_config

    ours, _ = cases(name).ours()
    spec = spec_from_config(json.loads((cases(name).path / "config.json").read_text()))
    assert count(spec).total == sum(p.numel() for p in ours.parameters())
    assert ours.kv_cache_shape() == (spec.num_layers, spec.num_kv_heads, spec.head_dim)
    alibi = ours.model.layers[0].self_attn.attn.alibi_slopes is not None
    assert spec.position_embedding == ("alibi" if alibi else "rope")


def test_repo_code_tokenizer_needs_the_flag_token_prompts_do_not(cases, tmp_path):
    """Baichuan's tokenizer is repo code (BaichuanTokenizer): without --trust-remote-code loading it is refused in
    one line naming the flag, while token-id prompts with skip_tokenizer_init run (the test above)."""
    import shutil

    from llmctl import LLM
    from llmctl.core.errors import UnsupportedModelError

    folder = tmp_path / "with-tokenizer"
    shutil.copytree(cases("baichuan_7b").path, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
        "tokenizer_class": "BaichuanTokenizer", "add_bos_token": False, "eos_token": "</s>"}))  # fmt: skip
    (folder / "tokenization_baichuan.py").write_text("raise SystemExit('repo code ran')\n")
    with pytest.raises(UnsupportedModelError, match=r"\(BaichuanTokenizer\) is defined by code in the model.s repo") as info:
        LLM(str(folder), dtype="float32", device="cpu", max_model_len=64)
    assert "--trust-remote-code" in str(info.value) + (info.value.hint or "")
    result = _cli("generate", "--model", str(folder), "--prompt", "hi", "--device", "cpu", "--max-model-len", "64")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "--trust-remote-code" in result.stderr and "BaichuanTokenizer" in lines[0], result.stderr
