"""Strict consistency of the Llama family (Llama, Mistral, Qwen2, Qwen3) against transformers on tiny checkpoints."""

from __future__ import annotations

import pytest
import torch

from llmctl.model_defs import llama
from llmctl.model_defs.layers.context import AttentionMetadata, ForwardContext

# Prompts of different lengths: one longer than Mistral's window (7) and Qwen3's (6), one of a single token.
PROMPTS = [
    [11, 250, 7, 99, 3, 180, 42, 42, 5, 77, 123, 9, 300, 18, 64, 2, 201, 55, 8],
    [17],
    [4, 90, 260, 33, 71, 12, 150, 6, 19, 48, 222],
    [301, 2, 88, 140, 5],
]
MAX_NEW_TOKENS = 8
# The architectures these tests hold to transformers; the registry test reads this list.
CONSISTENCY_ARCHITECTURES = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"]
# float32 on CPU: both sides run the same math in a different order (einsum vs matmul, fused residual),
# so logits differ by a few ulps of values around 1; 1e-4 leaves room for that and nothing more.
TOL = dict(atol=1e-4, rtol=1e-4)


def _hf_logits(hf, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([prompt])).logits[0].float()  # (len, V)


_HF_GREEDY: dict[tuple[int, tuple[int, ...]], tuple[list[int], list[torch.Tensor]]] = {}


def _hf_greedy(hf, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    """HF greedy tokens and per-step logprobs, memoised per (model, prompt) across the parametrized tests."""
    key = (id(hf), tuple(prompt))
    if key not in _HF_GREEDY:
        _HF_GREEDY[key] = _run_hf_greedy(hf, prompt)
    return _HF_GREEDY[key]


def _run_hf_greedy(hf, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    return tokens, [torch.log_softmax(step[0].float(), dim=-1) for step in out.logits]


def _check_greedy_close(ours, hf_tokens: list[int], hf_logprobs: list[torch.Tensor], k: int = 5) -> None:
    """Tokens must match; at the first divergence each side's token must be in the other's top-k (vLLM's rule)."""
    ours_tokens = ours.tokens[ours.prompt_len :]
    assert len(ours_tokens) == len(hf_tokens) == MAX_NEW_TOKENS
    for step, (a, b) in enumerate(zip(ours_tokens, hf_tokens)):
        if a != b:
            assert a in hf_logprobs[step].topk(k).indices.tolist(), f"step {step}: our {a} not in HF top-{k}"
            assert b in ours.logprobs[step].topk(k).indices.tolist(), f"step {step}: HF {b} not in our top-{k}"
            return


@pytest.mark.parametrize("use_cache", [True, False], ids=["paged", "no-cache"])
def test_prefill_logits_match_transformers(model_pair, kit, arch, use_cache):
    hf, ours, config = model_pair(arch)
    driver = kit.PagedDriver(ours, config, use_cache=use_cache)
    seqs = [kit.Seq(tokens=list(p), prompt_len=len(p)) for p in PROMPTS]
    with torch.inference_mode():
        logits = ours.compute_logits(driver.forward([(s, len(s.tokens)) for s in seqs])).float()
    start = 0
    for prompt in PROMPTS:
        torch.testing.assert_close(logits[start : start + len(prompt)], _hf_logits(hf, prompt), **TOL)
        start += len(prompt)


def test_chunked_prefill_logits_match_transformers(model_pair, kit, arch):
    """Prompts prefilled 3 tokens a step, all in one batch: every position's logits equal a one-shot forward."""
    hf, ours, config = model_pair(arch)
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


@pytest.mark.parametrize("chunk_size", [None, 4], ids=["full-prefill", "chunked-prefill"])
def test_greedy_matches_transformers_generate(model_pair, kit, arch, chunk_size):
    hf, ours, config = model_pair(arch)
    driver = kit.PagedDriver(ours, config, block_size=4)
    seqs = driver.greedy(PROMPTS, MAX_NEW_TOKENS, chunk_size=chunk_size)
    for seq, prompt in zip(seqs, PROMPTS):
        hf_tokens, hf_logprobs = _hf_greedy(hf, prompt)
        _check_greedy_close(seq, hf_tokens, hf_logprobs)


def test_greedy_check_can_fail(model_pair, kit):
    """The top-k rule rejects a token that is far down HF's distribution."""
    hf, _, _ = model_pair("llama_tied")
    hf_tokens, hf_logprobs = _hf_greedy(hf, PROMPTS[0])
    worst = int(hf_logprobs[0].argmin())
    fake = kit.Seq(tokens=list(PROMPTS[0]) + [worst] * MAX_NEW_TOKENS, prompt_len=len(PROMPTS[0]))
    fake.logprobs = [torch.full_like(hf_logprobs[0], -1.0)] * MAX_NEW_TOKENS
    with pytest.raises(AssertionError):
        _check_greedy_close(fake, hf_tokens, hf_logprobs)


def test_sliding_window_changes_mistral_output(model_pair, kit):
    """Mistral's window (7) is shorter than the first prompt, so dropping it must change the logits."""
    _, ours, config = model_pair("mistral")
    prompt = PROMPTS[0]
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, len(prompt)], dtype=torch.int32),
        seq_lens=torch.tensor([len(prompt)], dtype=torch.int32),
        slot_mapping=torch.arange(len(prompt)),
        block_tables=torch.zeros(1, 1, dtype=torch.int32),
        max_query_len=len(prompt),
        max_seq_len=len(prompt),
    )
    windows = [layer.self_attn.attn.sliding_window for layer in ours.model.layers]
    assert windows == [7, 7]
    with torch.inference_mode():
        ids, pos = torch.tensor(prompt), torch.arange(len(prompt))
        with_window = ours.compute_logits(ours(ids, pos, ForwardContext(meta)))
        try:
            for layer in ours.model.layers:
                layer.self_attn.attn.sliding_window = None
            without = ours.compute_logits(ours(ids, pos, ForwardContext(meta)))
        finally:
            for layer, window in zip(ours.model.layers, windows):
                layer.self_attn.attn.sliding_window = window
    assert torch.equal(with_window[:7], without[:7])  # positions < window see everything either way
    assert not torch.allclose(with_window[7:], without[7:], atol=1e-3)


def test_variants_follow_config(model_pair):
    _, qwen3, qwen3_config = model_pair("qwen3")
    assert [layer.self_attn.attn.sliding_window for layer in qwen3.model.layers] == [None, 6]
    assert hasattr(qwen3.model.layers[0].self_attn, "q_norm")
    _, qwen2, _ = model_pair("qwen2")
    attn = qwen2.model.layers[0].self_attn
    assert attn.qkv_proj.bias is not None and attn.o_proj.bias is None
    assert qwen2.lm_head.weight is qwen2.model.embed_tokens.weight  # tied
    _, llama3, llama3_config = model_pair("llama3")
    assert llama3.lm_head.weight is not llama3.model.embed_tokens.weight
    assert llama3.model.layers[0].self_attn.qkv_proj.weight.shape == (4 * 32 + 2 * 2 * 32, 64)
    assert llama.kv_cache_shape(llama3_config) == (2, 2, 32)
    assert llama.kv_cache_shape(qwen3_config) == (2, 2, 32)


def test_exported_classes_cover_the_architectures():
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        cls = getattr(llama, arch)
        assert cls.packed_modules_mapping["q_proj"] == ("qkv_proj", "q")
        assert cls.packed_modules_mapping["up_proj"] == ("gate_up_proj", 1)


def test_llm_generate_matches_transformers(model_pair, checkpoint, arch):
    """Through the real engine: LLM(...).generate, small blocks and a token budget that chunks the prefill."""
    from llmctl import LLM, SamplingParams

    hf, _, _ = model_pair(arch)
    llm = LLM(
        str(checkpoint(arch)),
        dtype="float32",
        device="cpu",
        skip_tokenizer_init=True,
        block_size=4,
        max_num_batched_tokens=12,
        num_kv_blocks=64,
    )
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, ignore_eos=True, logprobs=5)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    for out, prompt in zip(outs, PROMPTS):
        completion = out.outputs[0]
        hf_tokens, hf_logprobs = _hf_greedy(hf, prompt)
        for step, (a, b) in enumerate(zip(completion.token_ids, hf_tokens)):
            if a != b:  # the same top-5 rule as above, with the engine's own logprobs
                assert a in hf_logprobs[step].topk(5).indices.tolist()
                assert b in completion.logprobs[step]
                break
        assert len(completion.token_ids) == MAX_NEW_TOKENS


def test_consistency_list_matches_the_checkpoints(checkpoint, kit):
    """CONSISTENCY_ARCHITECTURES names exactly the architectures of the checkpoints tested here."""
    import json

    built = {json.loads((checkpoint(name) / "config.json").read_text())["architectures"][0] for name in kit.CASES}
    assert built == set(CONSISTENCY_ARCHITECTURES)
