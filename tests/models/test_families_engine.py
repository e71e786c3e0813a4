"""Every native decoder family runs through the registry and `LLM.generate` (paged KV, chunked prefill,
queueing) and gives transformers' greedy tokens, by the top-5 rule where they diverge."""

from __future__ import annotations

import pytest
import torch

SMALL = dict(vocab_size=128)
# model_type -> tiny config kwargs (each family's own key names), in float32 on CPU.
FAMILIES = {
    "gemma": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64),
    "gemma2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
                   max_position_embeddings=64),
    "gemma3_text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, sliding_window=4, max_position_embeddings=64),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     rotary_pct=0.5, max_position_embeddings=64),
    "phi": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                partial_rotary_factor=0.5, max_position_embeddings=64),
    "phi3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                word_embed_proj_dim=32),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, multi_query=True),
    "mpt": dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=64),
}
PROMPTS = [[5, 9, 17, 33, 2, 64, 7, 100, 11, 3], [42], [8, 8, 8, 90, 15, 77]]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    out = {}
    for model_type, kwargs in FAMILIES.items():
        torch.manual_seed(0)
        config = AutoConfig.for_model(model_type, **SMALL, **kwargs)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        folder = tmp_path_factory.mktemp(model_type)
        model.save_pretrained(folder)
        out[model_type] = (folder, model.eval())
    return out


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_generate_matches_transformers(folders, model_type):
    from llmctl import LLM, SamplingParams
    from llmctl.core.registry import lookup

    folder, hf = folders[model_type]
    llm = LLM(str(folder), device="cpu", dtype="float32", skip_tokenizer_init=True, max_model_len=64,
              block_size=4, max_num_batched_tokens=8, max_num_seqs=2)
    assert lookup(hf.config.architectures[0]).status == "native"
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=5)
    ours = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    for prompt, result in zip(PROMPTS, ours):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                              output_scores=True, return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
        theirs = ref.sequences[0, len(prompt):].tolist()
        got = result.outputs[0].token_ids
        assert len(got) == len(theirs) == NEW_TOKENS
        for step, (a, b) in enumerate(zip(got, theirs)):
            if a != b:  # DESIGN.md's rule: each side's token is in the other's top-5, then stop comparing
                assert b in result.outputs[0].logprobs[step], (model_type, step)
                assert a in torch.topk(ref.scores[step][0], 5).indices.tolist(), (model_type, step)
                break
