"""One prompt far longer than a step's token budget: many prefill chunks give the unchunked run's and transformers'
logprobs, through the packed (CUDA-layout) step inputs too; prompts longer than max_model_len are refused."""

from __future__ import annotations

import pytest
import torch

from llmctl import LLM, SamplingParams
from llmctl.core.engine import runner as runner_mod
from llmctl.core.engine.staging import Staging

PROMPT_LEN = 120  # of the tiny model's 128 positions
NEW_TOKENS = 6


def _prompt(vocab: int) -> list[int]:
    gen = torch.Generator().manual_seed(13)
    return torch.randint(5, vocab, (PROMPT_LEN,), generator=gen).tolist()


def _run(path, budget: int, prompt: list[int], packed: bool = False):
    llm = LLM(str(path), device="cpu", max_model_len=128, max_num_batched_tokens=budget, block_size=4,
              kv_cache_memory=1 << 20, max_num_seqs=2)  # fmt: skip
    if packed:  # the CUDA layout: every step's integers in one int32 buffer, two host buffers in turn
        llm.llm_engine.runner._staging = Staging(torch.device("cpu"), packed=True)
    steps = 0
    step = llm.llm_engine.step

    def counting_step(*a, **k):
        nonlocal steps
        steps += 1
        return step(*a, **k)

    llm.llm_engine.step = counting_step
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=NEW_TOKENS, logprobs=3, prompt_logprobs=2)
    out = llm.generate({"prompt_token_ids": prompt}, params)[0]
    assert out.error is None and out.outputs[0].finish_reason == "length"
    return out, steps


def _prompt_lp(out) -> list[float]:
    ids = out.prompt_token_ids
    return [entry[ids[i]].logprob for i, entry in enumerate(out.prompt_logprobs) if entry is not None]


@pytest.mark.parametrize("budget,packed", [(7, False), (16, True), (33, False)])
def test_many_chunks_equal_one_chunk_and_transformers(tiny_llama, budget, packed, monkeypatch):
    path, hf = tiny_llama
    prompt = _prompt(hf.config.vocab_size)
    monkeypatch.setattr(runner_mod, "PROMPT_LOGITS_ROWS", 5)  # prompt logprobs in slices inside every chunk
    chunked, steps = _run(path, budget, prompt, packed)
    assert steps >= -(-PROMPT_LEN // budget) + NEW_TOKENS - 1  # the prompt really spanned that many chunks
    monkeypatch.setattr(runner_mod, "PROMPT_LOGITS_ROWS", 2048)
    whole, whole_steps = _run(path, 128, prompt)
    assert whole_steps == NEW_TOKENS

    with torch.no_grad():  # transformers over prompt + generated tokens, float32
        ids = prompt + whole.outputs[0].token_ids
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)  # (L, V)
    ref_prompt = [ref[i, ids[i + 1]].item() for i in range(PROMPT_LEN - 1)]
    # float32 throughout; different chunkings only change the summation order of the attention (~1e-6)
    assert len(_prompt_lp(chunked)) == PROMPT_LEN - 1
    torch.testing.assert_close(_prompt_lp(chunked), _prompt_lp(whole), rtol=0, atol=1e-4)
    torch.testing.assert_close(_prompt_lp(whole), ref_prompt, rtol=0, atol=1e-4)
    for a, b in zip(chunked.prompt_logprobs[1:], whole.prompt_logprobs[1:]):
        assert list(a) == list(b)  # same top-2 (and chosen) tokens, same order
    assert chunked.outputs[0].token_ids == whole.outputs[0].token_ids
    assert whole.outputs[0].token_ids == [int(ref[PROMPT_LEN - 1 + j].argmax()) for j in range(NEW_TOKENS)]
    for a, b in zip(chunked.outputs[0].logprobs, whole.outputs[0].logprobs):
        torch.testing.assert_close([x.logprob for x in a.values()], [x.logprob for x in b.values()], rtol=0, atol=1e-4)


def test_prompt_longer_than_max_model_len_is_refused_not_chunked(tiny_llama):
    path, hf = tiny_llama
    llm = LLM(str(path), device="cpu", max_model_len=64, max_num_batched_tokens=8, kv_cache_memory=1 << 20)
    prompt = _prompt(hf.config.vocab_size)  # 120 tokens: 15 chunks' worth, over max_model_len
    outs = llm.generate([{"prompt_token_ids": prompt}, {"prompt_token_ids": prompt[:60]}],
                        SamplingParams(temperature=0.0, max_tokens=2))  # fmt: skip
    assert outs[0].error == "the prompt has 120 tokens, more than max_model_len=64"
    assert outs[0].outputs[0].token_ids == []
    assert outs[1].error is None and len(outs[1].outputs[0].token_ids) == 2
    assert llm.llm_engine.block_manager.num_used_blocks == 0


def test_engine_refuses_a_max_model_len_past_the_rotary_cache(tiny_llama):
    """Positions past the cos/sin cache would be read out of bounds by the rotary kernels: never let one be made."""
    from transformers import AutoConfig

    from llmctl.core.engine.config import EngineConfig
    from llmctl.core.engine.engine import LLMEngine
    from llmctl.core.engine.kv_cache import kv_cache_spec
    from llmctl.core.engine.loader import build_model
    from llmctl.core.errors import UsageError
    from llmctl.model_defs.llama import LlamaForCausalLM

    path, _ = tiny_llama
    config = AutoConfig.from_pretrained(str(path))  # max_position_embeddings 128: a cache of 128 rows
    model = build_model(config, LlamaForCausalLM, torch.float32, "cpu", None)
    spec = kv_cache_spec(model, torch.float32)
    with pytest.raises(UsageError, match="rotary cache of 128 positions"):
        LLMEngine(model, spec, EngineConfig(path, device="cpu", max_model_len=129, kv_cache_memory=1 << 20).resolve())
    config = EngineConfig(path, device="cpu", max_model_len=128, kv_cache_memory=1 << 20).resolve()
    assert LLMEngine(model, spec, config).max_model_len == 128
