"""On a GPU: llmctl's CUDA greedy output equals its CPU greedy output (run by hand, not collected by pytest).

    python tests/engine/gpu_check.py random                 # SmolLM2-135M shape, random weights, CPU vs CUDA here
    python tests/engine/gpu_check.py gguf FILE EXPECTED     # the real default model vs CPU tokens computed elsewhere
    python tests/engine/gpu_check.py expect FILE OUT        # write EXPECTED on a CPU machine
Prints one line per prompt and a summary; exits 1 on a float32 mismatch.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at a temperature of",
           "In 1492, Columbus", "The three primary colours are", "import numpy as np\n"]
SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "rms_norm_eps": 1e-05, "rope_theta": 100000.0, "max_position_embeddings": 8192, "vocab_size": 49152,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
}


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def greedy(path: str, device: str, dtype: str, prompts, max_tokens: int = 32, **kw) -> list[list[int]]:
    from llmctl import LLM, SamplingParams

    llm = LLM(path, device=device, dtype=dtype, max_model_len=512, **kw)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate(prompts, params)
    del llm
    return [o.outputs[0].token_ids for o in outs]


def compare(name: str, ref: list[list[int]], got: list[list[int]]) -> int:
    exact = 0
    for i, (a, b) in enumerate(zip(ref, got)):
        same = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        exact += same == len(a)
        print(f"  {name} prompt {i}: {same}/{len(a)} leading tokens equal")
    print(f"{name}: {exact}/{len(ref)} prompts identical")
    return exact


def main() -> int:
    mode = sys.argv[1]
    if mode == "expect":
        ids = greedy(sys.argv[2], "cpu", "float32", PROMPTS)
        json.dump({"prompts": PROMPTS, "tokens": ids}, open(sys.argv[3], "w"))
        return 0
    print("device:", torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (dry run)", "torch", torch.__version__)
    if mode == "gguf":
        expected = json.load(open(sys.argv[3]))["tokens"]
        t = time.perf_counter()
        got = greedy(sys.argv[2], DEVICE, "float32", PROMPTS)
        print(f"cuda float32 run: {time.perf_counter() - t:.1f} s")
        ok = compare("GGUF cpu-f32 vs cuda-f32", expected, got) == len(PROMPTS)
        compare("GGUF cpu-f32 vs cuda-bf16", expected, greedy(sys.argv[2], DEVICE, "bfloat16", PROMPTS))
        return 0 if ok else 1
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**SMOLLM2))
    folder = tempfile.mkdtemp()
    hf.save_pretrained(folder)
    del hf
    gen = torch.Generator().manual_seed(0)
    prompts = [{"prompt_token_ids": torch.randint(3, 49152, (n,), generator=gen).tolist()} for n in (1, 7, 33, 200, 511 - 32, 64)]
    kw = {"skip_tokenizer_init": True}
    cpu = greedy(folder, "cpu", "float32", prompts, **kw)
    ok = compare("random cpu-f32 vs cuda-f32", cpu, greedy(folder, DEVICE, "float32", prompts, **kw)) == len(prompts)
    queued = greedy(folder, DEVICE, "float32", prompts, max_num_seqs=2, max_num_batched_tokens=64, **kw)
    ok &= compare("random cpu-f32 vs cuda-f32 (2 seqs at a time, 64-token chunks)", cpu, queued) == len(prompts)
    compare("random cpu-f32 vs cuda-bf16", cpu, greedy(folder, DEVICE, "bfloat16", prompts, **kw))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
