"""Strict consistency against transformers for every tiny checkpoint of cases.py: packed and chunked prefill logits,
greedy decode through the paged cache and through LLM.generate (top-5 rule), dummy weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

# --import-mode=importlib and no __init__.py: the helper modules are loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
_spec = importlib.util.spec_from_file_location("cases", Path(__file__).with_name("cases.py"))
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)

# The architectures these tests hold to transformers; the registry test reads this list, and
# test_consistency_list_matches_the_checkpoints checks it against the checkpoints built here.
CONSISTENCY_ARCHITECTURES = [
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
    "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "GPT2LMHeadModel", "GPTJForCausalLM", "GPTNeoXForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM",
    "OPTForCausalLM", "BloomForCausalLM", "FalconForCausalLM", "MPTForCausalLM", "MptForCausalLM",
    "Olmo2ForCausalLM", "GraniteForCausalLM", "Starcoder2ForCausalLM", "InternLMForCausalLM", "InternLM2ForCausalLM",
    "GlmForCausalLM", "Glm4ForCausalLM", "ChatGLMModel", "ChatGLMForConditionalGeneration",
]  # fmt: skip
# One case per model_defs family for the dummy-weights run.
DUMMY = ["llama3", "gemma3", "gpt2", "gptj", "neox_parallel", "phi_qk_gqa", "phi3", "opt", "bloom", "falcon_7b",
         "mpt_7b", "olmo2", "granite", "starcoder2", "internlm2_bias", "glm", "glm4", "chatglm"]
# Through the engine: the Llama family's and falcon-7b's hub-style checkpoints, and one checkpoint per family with
# config.json as transformers 5 saves it (rope_parameters, layer_types), as a model fine-tuned today is.
ENGINE = [(name, "hub") for name in ("llama3", "llama_tied", "mistral", "qwen2", "qwen3", "falcon_7b", "olmo2",
                                     "granite", "starcoder2", "internlm", "internlm2", "glm",
                                     "glm4", "chatglm")] + [
    (name, "as-saved") for name in ("gemma", "gemma2", "gemma3", "gpt2", "gptj", "neox_parallel", "phi", "phi3",
                                    "opt", "bloom", "falcon_7b", "mpt_clip", "starcoder2_nobias")
]


@pytest.mark.parametrize("case", cases.STRICT)
@pytest.mark.parametrize("use_cache", [True, False], ids=["paged", "no-cache"])
def test_prefill_logits_match_transformers(bench, case, use_cache):
    bench.check_prefill(case, use_cache)


@pytest.mark.parametrize("case", cases.STRICT)
def test_chunked_prefill_logits_match_transformers(bench, case):
    bench.check_chunked_prefill(case)


@pytest.mark.parametrize("case", cases.STRICT)
@pytest.mark.parametrize("chunk_size", [None, 4], ids=["full-prefill", "chunked-prefill"])
def test_greedy_matches_transformers_generate(bench, case, chunk_size):
    bench.check_greedy(case, chunk_size)


@pytest.mark.parametrize(("case", "config_style"), ENGINE, ids=[f"{name}-{style}" for name, style in ENGINE])
def test_llm_generate_matches_transformers(bench, case, config_style):
    """Through the registry and the real engine: small blocks, a token budget that chunks the prefill, two
    sequences at a time so that the others queue."""
    from llmctl import LLM, SamplingParams

    hub_style = config_style == "hub"
    path = bench.checkpoint(case, hub_style)
    llm = LLM(str(path), dtype="float32", device="cpu", skip_tokenizer_init=True,
              max_model_len=64, block_size=4, max_num_batched_tokens=8, max_num_seqs=2, num_kv_blocks=64)
    assert llm.model_impl == "native"
    params = SamplingParams(temperature=0.0, max_tokens=harness.MAX_NEW_TOKENS, ignore_eos=True,
                            logprobs=harness.TOP_K)
    outs = llm.generate([{"prompt_token_ids": p} for p in harness.PROMPTS], params)
    for out, prompt in zip(outs, harness.PROMPTS):
        harness.check_completion_close(out.outputs[0], *bench.hf_greedy(case, prompt, hub_style))


@pytest.mark.parametrize("case", DUMMY)
def test_dummy_weights_run(bench, case):
    bench.check_dummy_weights(case)


def test_consistency_list_matches_the_checkpoints(bench):
    """CONSISTENCY_ARCHITECTURES names exactly the architectures of the checkpoints the strict checks run on;
    the dummy-weights and engine runs cover every model_defs family among them."""
    assert {bench.architecture(name) for name in cases.STRICT} == set(CONSISTENCY_ARCHITECTURES)
    families = {harness.family(bench.pair(name)[1]).__name__ for name in cases.STRICT}
    assert {harness.family(bench.pair(name)[1]).__name__ for name in DUMMY} == families
    assert {harness.family(bench.pair(name)[1]).__name__ for name, _ in ENGINE} == families


def test_greedy_check_can_fail(bench):
    """The top-k rule rejects a token that is far down transformers' distribution (paged driver and engine)."""
    prompt = harness.PROMPTS[0]
    hf_tokens, hf_logprobs = bench.hf_greedy("llama_tied", prompt)
    worst = int(hf_logprobs[0].argmin())
    fake = harness.Seq(tokens=list(prompt) + [worst] * harness.MAX_NEW_TOKENS, prompt_len=len(prompt))
    fake.logprobs = [torch.full_like(hf_logprobs[0], -1.0)] * harness.MAX_NEW_TOKENS
    with pytest.raises(AssertionError):
        harness.check_greedy_close(fake, hf_tokens, hf_logprobs)
    n = harness.MAX_NEW_TOKENS
    completion = SimpleNamespace(token_ids=[worst] * n, logprobs=[{worst: -1.0}] * n)
    with pytest.raises(AssertionError):
        harness.check_completion_close(completion, hf_tokens, hf_logprobs)
