"""Strict consistency of Gemma, Gemma 2 and Gemma 3 (text) against transformers on tiny random checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmctl.core.engine.kv_cache import kv_cache_spec
from llmctl.model_defs import gemma
from llmctl.model_defs.layers.context import AttentionMetadata, ForwardContext

# The architectures these tests hold to transformers; the registry test reads this list.
CONSISTENCY_ARCHITECTURES = ["GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"]

# Prompts of mixed lengths: two longer than the sliding window (6), one of a single token.
PROMPTS = [
    [11, 250, 7, 99, 3, 180, 42, 42, 5, 77, 123, 9, 300, 18, 64, 2, 201, 55, 8],
    [17],
    [4, 90, 260, 33, 71, 12, 150, 6, 19, 48, 222],
    [301, 2, 88, 140, 5],
]
MAX_NEW_TOKENS = 8
WINDOW = 6
# float32 on CPU: both sides run the same math in another order (fused qkv / gate_up, packed batch vs
# padded, softmax over the paged context), so logits differ by a few ulps of values around 1; 1e-4
# leaves room for that and nothing more (a wrong scale, window or norm moves them by > 1e-2).
TOL = dict(atol=1e-4, rtol=1e-4)

_BASE = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,  # != hidden / heads (16), as in gemma-7b (3072 / 16 heads, head_dim 256)
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

# name -> (transformers config class, config kwargs, keys of config.json rewritten the way hub checkpoints store them)
CASES: dict[str, tuple[str, dict, dict]] = {
    # google/gemma-2b style: legacy hidden_act "gelu" (meaning tanh), rope_theta at top level; untied head
    # here so that the untied path is exercised too.
    "gemma": (
        "GemmaConfig",
        dict(num_hidden_layers=2, tie_word_embeddings=False),
        dict(hidden_act="gelu", rope_theta=10000.0, rope_scaling=None),
    ),
    # google/gemma-2-2b style: no layer_types (even layers slide), query_pre_attn_scalar != head_dim,
    # soft-caps small enough to bite on these random weights.
    "gemma2": (
        "Gemma2Config",
        dict(
            num_hidden_layers=3,
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=2.0,
        ),
        dict(
            hidden_act="gelu_pytorch_tanh",
            hidden_activation="gelu_pytorch_tanh",
            rope_theta=10000.0,
            cache_implementation="hybrid",
        ),
    ),
    # google/gemma-3-1b-it style (model_type gemma3_text): sliding_window_pattern instead of layer_types,
    # rope_local_base_freq for the local layers; linear rope scaling on the global ones as gemma-3-4b has.
    "gemma3": (
        "Gemma3TextConfig",
        dict(num_hidden_layers=3, sliding_window=WINDOW, query_pre_attn_scalar=24, final_logit_softcapping=None),
        dict(
            rope_theta=1000000.0,
            rope_local_base_freq=10000.0,
            rope_scaling=dict(rope_type="linear", factor=8.0),
            sliding_window_pattern=3,
        ),
    ),
}


def _to_hub_style(config_path: Path, hub_keys: dict) -> None:
    data = json.loads(config_path.read_text())
    data.pop("rope_parameters", None)
    data.pop("layer_types", None)
    data.update(hub_keys)
    data["torch_dtype"] = data.pop("dtype", None) or "float32"
    config_path.write_text(json.dumps(data, indent=2))


def _make_checkpoint(name: str, out_dir: Path) -> Path:
    import transformers

    torch.manual_seed(sum(map(ord, name)))
    cls_name, kwargs, hub_keys = CASES[name]
    config = getattr(transformers, cls_name)(**{**_BASE, **kwargs})
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # HF init leaves norms 0: perturb everything so that each weight matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(out_dir)
    _to_hub_style(out_dir / "config.json", hub_keys)
    return out_dir


def _load_hf(path: Path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def _load_ours(path: Path):
    import transformers

    from llmctl.core.engine.loader import build_model, iter_safetensors

    config = transformers.AutoConfig.from_pretrained(path)
    model_cls = getattr(gemma, config.architectures[0])
    return build_model(config, model_cls, torch.float32, "cpu", iter_safetensors(path)), config


@pytest.fixture(scope="module")
def gemma_pair(tmp_path_factory):
    """gemma_pair(name) -> (transformers model, our model, hf config, checkpoint dir), built once per module."""
    loaded: dict[str, tuple] = {}

    def get(name: str):
        if name not in loaded:
            path = _make_checkpoint(name, tmp_path_factory.mktemp(name))
            ours, config = _load_ours(path)
            loaded[name] = (_load_hf(path), ours, config, path)
        return loaded[name]

    return get


def _hf_logits(hf, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([prompt])).logits[0].float()  # (len, V)


_HF_GREEDY: dict[tuple[int, tuple[int, ...]], tuple[list[int], list[torch.Tensor]]] = {}


def _hf_greedy(hf, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    """HF greedy tokens and per-step logprobs, memoised per (model, prompt)."""
    key = (id(hf), tuple(prompt))
    if key not in _HF_GREEDY:
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
        tokens = out.sequences[0, len(prompt) :].tolist()
        _HF_GREEDY[key] = tokens, [torch.log_softmax(step[0].float(), dim=-1) for step in out.logits]
    return _HF_GREEDY[key]


def _check_greedy_close(ours, hf_tokens: list[int], hf_logprobs: list[torch.Tensor], k: int = 5) -> None:
    """Tokens must match; at the first divergence each side's token must be in the other's top-k (vLLM's rule)."""
    ours_tokens = ours.tokens[ours.prompt_len :]
    assert len(ours_tokens) == len(hf_tokens) == MAX_NEW_TOKENS
    for step, (a, b) in enumerate(zip(ours_tokens, hf_tokens)):
        if a != b:
            assert a in hf_logprobs[step].topk(k).indices.tolist(), f"step {step}: our {a} not in HF top-{k}"
            assert b in ours.logprobs[step].topk(k).indices.tolist(), f"step {step}: HF {b} not in our top-{k}"
            return


def _ctx_for(prompt: list[int]) -> ForwardContext:
    """Metadata for one prompt attended within itself (no KV cache)."""
    n = len(prompt)
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


def _one_shot_logits(model, prompt: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(prompt), torch.arange(len(prompt)), _ctx_for(prompt))).float()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("use_cache", [True, False], ids=["paged", "no-cache"])
def test_prefill_logits_match_transformers(gemma_pair, kit, case, use_cache):
    hf, ours, config, _ = gemma_pair(case)
    driver = kit.PagedDriver(ours, config, use_cache=use_cache)
    seqs = [kit.Seq(tokens=list(p), prompt_len=len(p)) for p in PROMPTS]
    with torch.inference_mode():
        logits = ours.compute_logits(driver.forward([(s, len(s.tokens)) for s in seqs])).float()
    start = 0
    for prompt in PROMPTS:
        torch.testing.assert_close(logits[start : start + len(prompt)], _hf_logits(hf, prompt), **TOL)
        start += len(prompt)


@pytest.mark.parametrize("case", sorted(CASES))
def test_chunked_prefill_logits_match_transformers(gemma_pair, kit, case):
    """Prompts prefilled 3 tokens a step, all in one batch: every position's logits equal a one-shot forward."""
    hf, ours, config, _ = gemma_pair(case)
    driver = kit.PagedDriver(ours, config, block_size=4)
    seqs = [kit.Seq(tokens=list(p), prompt_len=len(p)) for p in PROMPTS]
    collected = {id(s): [] for s in seqs}
    while active := [s for s in seqs if s.computed < len(s.tokens)]:
        batch = [(s, min(3, len(s.tokens) - s.computed)) for s in active]
        with torch.inference_mode():
            logits = ours.compute_logits(driver.forward(batch)).float()
        start = 0
        for seq, n in batch:
            collected[id(seq)].append(logits[start : start + n])
            start += n
    for seq in seqs:
        torch.testing.assert_close(torch.cat(collected[id(seq)]), _hf_logits(hf, seq.tokens), **TOL)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk_size", [None, 4], ids=["full-prefill", "chunked-prefill"])
def test_greedy_matches_transformers_generate(gemma_pair, kit, case, chunk_size):
    hf, ours, config, _ = gemma_pair(case)
    driver = kit.PagedDriver(ours, config, block_size=4)
    seqs = driver.greedy(PROMPTS, MAX_NEW_TOKENS, chunk_size=chunk_size)
    for seq, prompt in zip(seqs, PROMPTS):
        hf_tokens, hf_logprobs = _hf_greedy(hf, prompt)
        _check_greedy_close(seq, hf_tokens, hf_logprobs)


def test_variants_follow_config(gemma_pair):
    _, g1, g1_config, _ = gemma_pair("gemma")
    assert g1_config.hidden_act == "gelu_pytorch_tanh"  # transformers rewrote the legacy "gelu" too
    assert type(g1.model.layers[0].mlp.act_fn).__name__ == "GeluTanhAndMul"
    assert [layer.self_attn.attn.sliding_window for layer in g1.model.layers] == [None, None]
    assert g1.model.layers[0].self_attn.attn.scale == 32**-0.5
    assert g1.lm_head.weight is not g1.model.embed_tokens.weight
    assert g1.final_logit_softcapping is None
    assert gemma.kv_cache_shape(g1_config) == (2, 2, 32)

    _, g2, _, _ = gemma_pair("gemma2")
    attn = [layer.self_attn.attn for layer in g2.model.layers]
    assert [a.sliding_window for a in attn] == [WINDOW, None, WINDOW]  # hub configs: even layers slide
    assert all(a.logit_softcap == 5.0 and a.scale == 24**-0.5 for a in attn)
    assert g2.final_logit_softcapping == 2.0
    assert g2.lm_head.weight is g2.model.embed_tokens.weight  # tied, the Gemma default

    _, g3, g3_config, _ = gemma_pair("gemma3")
    layers = g3.model.layers
    assert [layer.self_attn.attn.sliding_window for layer in layers] == [WINDOW, WINDOW, None]  # pattern 3
    assert all(layer.self_attn.attn.logit_softcap is None for layer in layers)
    local, global_ = layers[0].self_attn.rotary_emb, layers[2].self_attn.rotary_emb
    assert layers[1].self_attn.rotary_emb is local and global_ is not local
    assert local.rope_type == "default" and global_.rope_type == "linear"
    assert hasattr(layers[0].self_attn, "q_norm") and not hasattr(g2.model.layers[0].self_attn, "q_norm")
    assert gemma.kv_cache_shape(g3_config) == (3, 2, 32)
    spec = kv_cache_spec(g3_config, torch.float32)  # what the engine sizes its cache with
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == gemma.kv_cache_shape(g3_config)


@pytest.mark.parametrize(
    "case, attribute, value",
    [
        ("gemma2", "sliding_window", None),
        ("gemma2", "logit_softcap", None),
        ("gemma3", "sliding_window", None),
    ],
)
def test_window_and_softcap_matter(gemma_pair, case, attribute, value):
    """The tiny configs exercise each feature: turning one off moves the logits far beyond TOL."""
    _, ours, _, _ = gemma_pair(case)
    prompt = PROMPTS[0]
    attns = [layer.self_attn.attn for layer in ours.model.layers]
    saved = [getattr(a, attribute) for a in attns]
    reference = _one_shot_logits(ours, prompt)
    try:
        for attn in attns:
            setattr(attn, attribute, value)
        changed = _one_shot_logits(ours, prompt)
    finally:
        for attn, old in zip(attns, saved):
            setattr(attn, attribute, old)
    if attribute == "sliding_window":  # positions < window see their whole context either way
        torch.testing.assert_close(reference[:WINDOW], changed[:WINDOW], **TOL)
        reference, changed = reference[WINDOW:], changed[WINDOW:]
    assert (reference - changed).abs().max() > 1e-2


def test_final_softcap_bounds_the_logits(gemma_pair):
    _, ours, _, _ = gemma_pair("gemma2")
    logits = _one_shot_logits(ours, PROMPTS[0])
    assert logits.abs().max() < 2.0
    with torch.inference_mode():
        hidden = ours(torch.tensor(PROMPTS[0]), torch.arange(len(PROMPTS[0])), _ctx_for(PROMPTS[0]))
        raw = ours.lm_head(hidden)
    assert raw.abs().max() > 2.0  # the cap is what bounds them



def test_gemma_norm_matches_transformers_in_bfloat16():
    """(1 + w) multiplies in float32 before the cast, as transformers' GemmaRMSNorm: bit-equal in bf16."""
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm as HFGemmaRMSNorm

    from llmctl.model_defs.layers.gemma_norm import GemmaRMSNorm

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 48, generator=gen).to(torch.bfloat16)
    residual = torch.randn(7, 48, generator=gen).to(torch.bfloat16)
    weight = torch.randn(48, generator=gen) * 0.3
    hf, ours = HFGemmaRMSNorm(48, eps=1e-6), GemmaRMSNorm(48, eps=1e-6)
    with torch.no_grad():
        hf.weight.copy_(weight)
        ours.weight.copy_(weight)
    hf, ours = hf.to(torch.bfloat16), ours.to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(ours(x), hf(x))
        normed, summed = ours(x, residual)
        assert torch.equal(summed, residual + x)
        assert torch.equal(normed, hf(residual + x))


def test_embed_normalizer_rounds_to_the_dtype():
    # transformers' comment: sqrt(3072) = 55.4256 becomes 55.5 in bfloat16.
    assert gemma._embed_normalizer(3072, torch.bfloat16) == 55.5
    assert gemma._embed_normalizer(3072, torch.float32) == pytest.approx(3072**0.5, rel=1e-7)


def test_dummy_weights_run(gemma_pair):
    """load_format="dummy": random weights of the right shapes give finite logits (Gemma norms stay near 1)."""
    from llmctl.core.engine.loader import build_model

    _, _, config, _ = gemma_pair("gemma3")
    model = build_model(config, gemma.Gemma3ForCausalLM, torch.float32, "cpu", None)
    assert torch.isfinite(_one_shot_logits(model, PROMPTS[2])).all()


def test_bidirectional_gemma3_is_refused(gemma_pair):
    import transformers

    from llmctl.core.errors import UnsupportedModelError

    config = transformers.Gemma3TextConfig(**{**_BASE, "num_hidden_layers": 2, "use_bidirectional_attention": True})
    with pytest.raises(UnsupportedModelError):
        gemma.Gemma3ForCausalLM(config)


def test_consistency_list_matches_the_checkpoints(gemma_pair):
    built = {json.loads((gemma_pair(name)[3] / "config.json").read_text())["architectures"][0] for name in CASES}
    assert built == set(CONSISTENCY_ARCHITECTURES)


def test_layer_types_fallback_without_layer_types():
    """Configs without layer_types (raw hub dicts) get each generation's documented pattern."""
    from types import SimpleNamespace

    S, F = gemma.SLIDING, gemma.FULL
    config = SimpleNamespace(num_hidden_layers=4)
    assert gemma.layer_types_of(config, gemma.GemmaForCausalLM.variant) == [F, F, F, F]
    assert gemma.layer_types_of(config, gemma.Gemma2ForCausalLM.variant) == [S, F, S, F]
    config = SimpleNamespace(num_hidden_layers=7)
    assert gemma.layer_types_of(config, gemma.Gemma3ForCausalLM.variant) == [S] * 5 + [F, S]
    config.sliding_window_pattern = 2
    assert gemma.layer_types_of(config, gemma.Gemma3ForCausalLM.variant) == [S, F, S, F, S, F, S]
