"""The LLM class end to end on a tiny random Llama: input forms, order, errors, chat, and greedy vs transformers."""

from __future__ import annotations

import math

import pytest
import torch

from llmctl import LLM, SamplingParams
from llmctl.core.errors import UsageError

GREEDY = dict(temperature=0.0, ignore_eos=True)

PROMPTS = [
    "Hello, my name is",
    "The quick brown fox jumps over the lazy dog. Paged attention keeps the KV cache",
    "Café",
    "Continuous batching lets new requests join",
    "emoji 🙂 and numbers 12345, 東京",
    "The",
    "Paged attention keeps the KV cache in fixed-size blocks. The quick brown",
]


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(str(tiny_llama_dir), device="cpu", kv_cache_memory=1 << 20)


def test_greedy_matches_transformers_with_queueing_chunking_and_preemption(tiny_llama_dir, hf_greedy):
    # 3 seats for 7 prompts, 10 tokens per step (long prompts are chunked), and 12 blocks of 4 tokens:
    # not enough for three sequences of ~40 tokens, so the scheduler has to preempt and recompute.
    llm = LLM(str(tiny_llama_dir), device="cpu", max_num_seqs=3, max_num_batched_tokens=10, block_size=4, num_kv_blocks=12,
              max_model_len=48)  # fmt: skip
    params = SamplingParams(max_tokens=20, **GREEDY)
    outs = llm.generate(PROMPTS, params)
    assert [o.prompt for o in outs] == PROMPTS
    assert sum(o.metrics.num_preemptions for o in outs) > 0
    for o in outs:
        assert o.finished and o.error is None
        assert o.outputs[0].finish_reason == "length"
        assert o.outputs[0].token_ids == hf_greedy(o.prompt_token_ids, 20)
    assert llm.llm_engine.block_manager.num_free_blocks == 12  # every block came back


def test_constrained_run_equals_unconstrained_run(llm, tiny_llama_dir):
    tight = LLM(str(tiny_llama_dir), device="cpu", max_num_seqs=2, max_num_batched_tokens=7, block_size=2, num_kv_blocks=24,
                 max_model_len=48)  # fmt: skip
    params = SamplingParams(max_tokens=15, **GREEDY)
    a = llm.generate(PROMPTS, params)
    b = tight.generate(PROMPTS, params)
    assert sum(o.metrics.num_preemptions for o in b) > 0
    assert [o.outputs[0].token_ids for o in a] == [o.outputs[0].token_ids for o in b]
    assert [o.outputs[0].text for o in a] == [o.outputs[0].text for o in b]


def test_input_forms_and_order(llm):
    tok = llm.get_tokenizer()
    ids = tok.encode("Hello, my name is")
    one = llm.generate("Hello, my name is", SamplingParams(max_tokens=3, **GREEDY))
    assert len(one) == 1 and one[0].prompt_token_ids == ids
    as_tokens = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=3, **GREEDY))
    assert as_tokens[0].outputs[0].token_ids == one[0].outputs[0].token_ids
    assert as_tokens[0].prompt is None

    # A mixed list with one SamplingParams per prompt: outputs come back in prompt order.
    prompts = ["The", {"prompt_token_ids": ids}, "Café", {"prompt": "Hello"}]
    params = [SamplingParams(max_tokens=n, **GREEDY) for n in (5, 2, 7, 1)]
    outs = llm.generate(prompts, params)
    assert [len(o.outputs[0].token_ids) for o in outs] == [5, 2, 7, 1]
    assert [o.prompt for o in outs] == ["The", None, "Café", "Hello"]
    assert outs[1].outputs[0].token_ids == one[0].outputs[0].token_ids[:2]
    assert len({o.request_id for o in outs}) == 4

    text = outs[0].outputs[0].text
    assert text == tok.decode(outs[0].outputs[0].token_ids, skip_special_tokens=True)

    with pytest.raises(UsageError):
        llm.generate(["a", "b"], [SamplingParams()])
    with pytest.raises(UsageError):
        llm.generate([123])


def test_default_sampling_params_and_seed(llm):
    out = llm.generate("Hello")[0]
    assert len(out.outputs[0].token_ids) <= 16  # vLLM's default max_tokens
    seeded = SamplingParams(temperature=1.0, seed=1234, max_tokens=8, ignore_eos=True)
    alone = llm.generate("The quick", seeded)[0].outputs[0].token_ids
    # Same seed, other requests in the same batch: same tokens.
    batch = llm.generate(["Hello", "The quick", "Café"], [SamplingParams(temperature=1.0, max_tokens=8), seeded, seeded])
    assert batch[1].outputs[0].token_ids == alone


def test_skip_tokenizer_init(tiny_llama_dir, llm):
    bare = LLM(str(tiny_llama_dir), device="cpu", skip_tokenizer_init=True, kv_cache_memory=1 << 20)
    assert bare.get_tokenizer() is None
    ids = llm.get_tokenizer().encode("Hello, my name is")
    out = bare.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=4, **GREEDY))[0]
    assert out.outputs[0].text == ""
    assert out.outputs[0].token_ids == llm.generate("Hello, my name is", SamplingParams(max_tokens=4, **GREEDY))[
        0
    ].outputs[0].token_ids
    with pytest.raises(UsageError):
        bare.generate("text prompt")
    with pytest.raises(UsageError):
        bare.chat([{"role": "user", "content": "hi"}])


def test_chat_template(llm):
    tok = llm.get_tokenizer()
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    expected_text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert expected_text.endswith("<|assistant|>") and expected_text.startswith("<s>")
    out = llm.chat(conv, SamplingParams(max_tokens=3, **GREEDY))
    assert len(out) == 1
    assert out[0].prompt == expected_text
    assert out[0].prompt_token_ids == tok.encode(expected_text, add_special_tokens=False)
    assert out[0].prompt_token_ids.count(tok.bos_token_id) == 1  # the template's BOS, not added twice
    same = llm.generate({"prompt_token_ids": out[0].prompt_token_ids}, SamplingParams(max_tokens=3, **GREEDY))
    assert same[0].outputs[0].token_ids == out[0].outputs[0].token_ids

    two = llm.chat([conv, [{"role": "user", "content": "Bye"}]], SamplingParams(max_tokens=2, **GREEDY))
    assert len(two) == 2 and two[1].prompt.endswith("<|assistant|>") and "Bye" in two[1].prompt
    no_gen = llm.chat(conv, SamplingParams(max_tokens=1), add_generation_prompt=False)
    assert not no_gen[0].prompt.endswith("<|assistant|>")


def test_prompt_too_long_is_a_per_request_error(llm):
    long_ids = [5] * (llm.max_model_len + 1)
    outs = llm.generate(
        ["Hello", {"prompt_token_ids": long_ids}, {"prompt_token_ids": []}, "The"],
        SamplingParams(max_tokens=3, **GREEDY),
    )
    assert [o.error is None for o in outs] == [True, False, False, True]
    assert "max_model_len" in outs[1].error
    assert outs[1].outputs[0].finish_reason == "error" and outs[1].outputs[0].token_ids == []
    assert len(outs[0].outputs[0].token_ids) == 3 and len(outs[3].outputs[0].token_ids) == 3
    assert not llm.llm_engine.has_unfinished_requests()


def test_generation_stops_at_max_model_len(llm):
    n = llm.max_model_len - 3
    out = llm.generate({"prompt_token_ids": [7] * n}, SamplingParams(max_tokens=None, **GREEDY))[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(out.outputs[0].token_ids) == 3


def test_stop_token_ids_and_stop_strings(llm, hf_greedy):
    ids = llm.get_tokenizer().encode("Hello, my name is")
    ref = hf_greedy(ids, 12)
    target = ref[4]
    out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=12, stop_token_ids=[target], **GREEDY))
    c = out[0].outputs[0]
    assert c.token_ids == ref[: ref.index(target) + 1]
    assert (c.finish_reason, c.stop_reason) == ("stop", target)

    # EOS ends a request unless ignore_eos: make the 3rd greedy token the EOS through a second LLM config.
    full = llm.generate("Hello, my name is", SamplingParams(max_tokens=12, **GREEDY))[0].outputs[0].text
    assert len(full) > 4
    stop_str = full[2:4]
    out = llm.generate("Hello, my name is", SamplingParams(max_tokens=12, stop=[stop_str], **GREEDY))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop_str
    assert out.text == full[: full.index(stop_str)]
    kept = llm.generate(
        "Hello, my name is",
        SamplingParams(max_tokens=12, stop=[stop_str], include_stop_str_in_output=True, **GREEDY),
    )[0].outputs[0]
    assert kept.text == full[: full.index(stop_str) + len(stop_str)]


def test_eos_stops_unless_ignored(tiny_llama_dir, llm, hf_greedy):
    ids = llm.get_tokenizer().encode("The quick brown fox")
    ref = hf_greedy(ids, 10)
    engine = llm.llm_engine
    saved = set(engine.eos_token_ids)
    engine.eos_token_ids = {ref[2]}  # pretend the model's third greedy token is its EOS
    try:
        out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=10, temperature=0.0))[0].outputs[0]
        assert out.token_ids == ref[: ref.index(ref[2]) + 1]
        assert out.finish_reason == "stop" and out.stop_reason is None
        ignored = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=10, **GREEDY))[0].outputs[0]
        assert ignored.token_ids == ref
    finally:
        engine.eos_token_ids = saved


def test_logprobs_and_prompt_logprobs_match_transformers(tiny_llama, hf_greedy):
    path, hf = tiny_llama
    # Chunked prefill (5 tokens a step) so prompt logprobs are gathered across chunks.
    llm = LLM(str(path), device="cpu", max_num_batched_tokens=5, block_size=4, kv_cache_memory=1 << 20)
    prompt = PROMPTS[1]
    out = llm.generate(prompt, SamplingParams(max_tokens=4, logprobs=3, prompt_logprobs=2, **GREEDY))[0]
    ids = out.prompt_token_ids + out.outputs[0].token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)  # (L, V)
    n = len(out.prompt_token_ids)

    assert len(out.prompt_logprobs) == n and out.prompt_logprobs[0] is None
    for j in range(1, n):
        entry = out.prompt_logprobs[j]
        tok = ids[j]
        assert math.isclose(entry[tok].logprob, ref[j - 1, tok].item(), abs_tol=1e-4)
        top2 = ref[j - 1].topk(2).indices.tolist()
        assert set(top2) <= set(entry)
        assert entry[top2[0]].rank == 1

    c = out.outputs[0]
    assert len(c.logprobs) == 4
    total = 0.0
    for i, (tok, entry) in enumerate(zip(c.token_ids, c.logprobs)):
        row = ref[n - 1 + i]
        assert entry[tok].rank == 1  # greedy picks the most likely token
        assert len(entry) == 3  # the sampled token is one of the top 3
        assert math.isclose(entry[tok].logprob, row[tok].item(), abs_tol=1e-4)
        assert entry[tok].decoded_token == llm.get_tokenizer().decode([tok])
        total += entry[tok].logprob
    assert math.isclose(c.cumulative_logprob, total, abs_tol=1e-5)


def test_stream_and_metrics(llm):
    seen = list(llm.stream("Hello, my name is", SamplingParams(max_tokens=5, **GREEDY)))
    assert [len(o.outputs[0].token_ids) for o in seen] == [1, 2, 3, 4, 5]
    assert [o.finished for o in seen] == [False] * 4 + [True]
    m = seen[-1].metrics
    assert m.first_token_time is not None and m.finished_time is not None
    assert m.arrival_time <= m.first_token_time <= m.finished_time
    assert m.time_to_first_token is not None


def test_bad_options(tiny_llama_dir):
    with pytest.raises(UsageError):
        LLM(str(tiny_llama_dir), device="cpu", no_such_option=1)
    with pytest.raises(UsageError):
        LLM(str(tiny_llama_dir), device="cpu", max_model_len=10_000)
    with pytest.raises(UsageError):  # the cache cannot hold one sequence of the max_model_len asked for
        LLM(str(tiny_llama_dir), device="cpu", kv_cache_memory=1024, max_model_len=64)
    with pytest.raises(UsageError):
        LLM(str(tiny_llama_dir), device="cpu", num_kv_blocks=4, block_size=4, max_model_len=32)


def test_dtype_auto_is_float32_on_cpu_for_half_checkpoints():
    from transformers import LlamaConfig

    from llmctl.core.engine.model_source import resolve_dtype

    cfg = LlamaConfig(torch_dtype="bfloat16")
    assert resolve_dtype("auto", cfg, torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", cfg, torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", cfg, torch.device("cpu")) == torch.float16
    with pytest.raises(UsageError):
        resolve_dtype("int3", cfg, torch.device("cpu"))


def test_default_max_model_len_shrinks_to_the_kv_cache(tiny_llama_dir):
    # 2 KiB of cache: 512 bytes a token (2 layers x K,V x 2 heads x 16 dims x 4 bytes) -> 4 tokens.
    with pytest.warns(UserWarning, match="max_model_len"):
        small = LLM(str(tiny_llama_dir), device="cpu", kv_cache_memory=2048, block_size=2)
    assert small.max_model_len == 4
    outs = small.generate([{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [5] * 5}], SamplingParams(max_tokens=9))
    assert len(outs[0].outputs[0].token_ids) == 2 and outs[0].outputs[0].finish_reason == "length"
    assert outs[1].error is not None


def test_default_max_num_seqs_by_device(monkeypatch):
    """256 sequences at most unless told; 512 on a CUDA card of 70 GiB or more."""
    from types import SimpleNamespace

    from llmctl.core.engine import config

    assert config.default_max_num_seqs(torch.device("cpu")) == 256
    for gib, want in ((80, 512), (40, 256)):
        props = SimpleNamespace(total_memory=gib << 30)
        monkeypatch.setattr(config.torch.cuda, "get_device_properties", lambda device, props=props: props)
        assert config.default_max_num_seqs(torch.device("cuda")) == want
