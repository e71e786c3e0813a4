"""The engine on a CUDA device (skipped without one): KV cache sized from free memory, greedy equals transformers."""

from __future__ import annotations

import pytest
import torch

from llmctl import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPTS = ["Hello, my name is", "The quick brown fox jumps over the lazy dog.", "Café", "Paged attention keeps"]


def test_cuda_kv_cache_from_gpu_memory_utilization(tiny_llama_dir):
    _, total = torch.cuda.mem_get_info()
    # max_num_seqs so large that the memory share, not max_model_len * max_num_seqs, bounds the cache.
    llm = LLM(str(tiny_llama_dir), device="cuda", dtype="float32", gpu_memory_utilization=0.05, max_num_seqs=10**6)
    engine = llm.llm_engine
    cache_bytes = sum(c.numel() * c.element_size() for c in engine.runner.kv_caches)
    assert engine.runner.kv_caches[0].is_cuda
    # The cache stays inside the share of the card we were given (weights and activations come out of it).
    assert 0.03 * total < cache_bytes <= 0.05 * total
    del llm, engine
    torch.cuda.empty_cache()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_greedy_matches_transformers_with_preemption(tiny_llama_dir, dtype):
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    llm = LLM(str(tiny_llama_dir), device="cuda", dtype=dtype, max_num_seqs=3, max_num_batched_tokens=8,
              block_size=4, num_kv_blocks=10, max_model_len=40)  # fmt: skip
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=16, logprobs=5))
    assert sum(o.metrics.num_preemptions for o in outs) > 0
    # A fresh copy: the session fixture's float32 CPU model must stay untouched for the CPU tests.
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch_dtype).to("cuda").eval()
    for o in outs:
        ids = list(o.prompt_token_ids)
        ref_top5 = []
        with torch.no_grad():
            for _ in range(16):
                logits = model(torch.tensor([ids], device="cuda")).logits[0, -1].float()
                ref_top5.append(set(logits.topk(5).indices.tolist()))
                ids.append(int(logits.argmax()))
        ref = ids[len(o.prompt_token_ids) :]
        ours = o.outputs[0].token_ids
        if dtype == "float32":
            assert ours == ref
        else:
            # bf16 rounding differs between the two implementations: at the first divergence, each
            # side's token must be in the other's top-5 (the rule vLLM's model tests use).
            for i, (a, b) in enumerate(zip(ours, ref)):
                if a != b:
                    assert a in ref_top5[i] and b in o.outputs[0].logprobs[i]
                    break
