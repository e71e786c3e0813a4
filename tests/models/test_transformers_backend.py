"""The transformers backend: transformers' layers inside llmctl's engine (scheduler, sampler, paged KV cache),
strictly consistent with transformers; model_impl selection; `check` verdicts for transformers-only architectures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

# Run strictly through the backend (no native def): greedy tokens match transformers by the top-5 rule.
CONSISTENCY_ARCHITECTURES = ["Olmo3ForCausalLM", "MixtralForCausalLM"]

# Mixed lengths, one of a single token, the longest well past the sliding window (4).
PROMPTS = [[5, 9, 17, 33, 2, 64, 7, 100, 11, 3, 81, 26, 40], [42], [8, 8, 8, 90, 15, 77], [120, 1, 60]]
NEW_TOKENS = 6
ENGINE = dict(device="cpu", dtype="float32", skip_tokenizer_init=True, max_model_len=64, block_size=4,
              max_num_batched_tokens=8, max_num_seqs=3)  # fmt: skip
TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None)  # fmt: skip


def _save(model_type: str, out_dir, **kwargs):
    """A tiny random float32 checkpoint as save_pretrained writes it, every weight perturbed so that each matters."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**TINY, **kwargs})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # HF init leaves biases 0 and norms 1
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(out_dir)
    path = out_dir / "config.json"
    data = json.loads(path.read_text())
    data["torch_dtype"] = data.pop("dtype", None) or "float32"  # the key hub checkpoints carry
    path.write_text(json.dumps(data, indent=2))
    return out_dir, model.eval()


@pytest.fixture(scope="module")
def olmo3(tmp_path_factory):
    # Sliding window 4 on every layer, q/k norms over the full projections, post-norms, attention biases, GQA:
    # an architecture llmctl has no native def for.
    return _save("olmo3", tmp_path_factory.mktemp("olmo3"), sliding_window=4, attention_bias=True,
                 layer_types=["sliding_attention"] * 2)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _save("llama", tmp_path_factory.mktemp("llama"), head_dim=16, tie_word_embeddings=False)


def _generate(folder, **kw):
    from llmctl import LLM, SamplingParams

    llm = LLM(str(folder), **ENGINE, **kw)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=5)
    return llm, llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)


def _check_against_hf(hf, results) -> None:
    for prompt, result in zip(PROMPTS, results):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                              output_scores=True, return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
        theirs = ref.sequences[0, len(prompt):].tolist()
        got = result.outputs[0].token_ids
        assert len(got) == len(theirs) == NEW_TOKENS
        for step, (a, b) in enumerate(zip(got, theirs)):
            if a != b:  # DESIGN.md's rule: each side's token is in the other's top-5, then stop comparing
                assert b in result.outputs[0].logprobs[step], (prompt, step)
                assert a in torch.topk(ref.scores[step][0], 5).indices.tolist(), (prompt, step)
                break


def test_auto_falls_back_to_transformers_and_matches_hf(olmo3):
    from llmctl.core.registry import lookup

    folder, hf = olmo3
    row = lookup("Olmo3ForCausalLM")
    assert row is None or row.status == "planned"  # no native def: auto must pick the backend
    llm, results = _generate(folder, model_impl="auto")
    assert llm.model_impl == "transformers"
    assert type(llm.llm_engine.runner.model).__name__ == "TransformersForCausalLM"
    _check_against_hf(hf, results)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    # A sparse MoE (4 experts, top-2) whose checkpoint transformers 5 converts on load (experts fused).
    return _save("mixtral", tmp_path_factory.mktemp("mixtral"), num_local_experts=4, num_experts_per_tok=2,
                 sliding_window=None)


def test_moe_checkpoint_loads_through_transformers_and_matches_hf(mixtral):
    from safetensors import safe_open

    folder, hf = mixtral
    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # hub layout on disk: one tensor per expert
        names = list(f.keys())
    assert any(".experts.3." in n for n in names), names[:8]
    llm, results = _generate(folder, model_impl="auto")
    assert llm.model_impl == "transformers"
    _check_against_hf(hf, results)
    ours = dict(llm.llm_engine.runner.model.named_parameters())
    for name, param in hf.named_parameters():  # every converted tensor arrived, value for value
        assert torch.equal(ours[name].detach(), param.detach()), name


def test_prefill_logits_match_hf_and_no_mask_is_built(olmo3, monkeypatch):
    """The packed batch through the paged cache gives HF's logits per prompt; transformers hands over no mask."""
    from transformers import AttentionInterface

    from llmctl.core.engine.kv_cache import kv_cache_spec
    from llmctl.core.engine.model_source import load_hf_config
    from llmctl.core.engine.loader import build_model, iter_safetensors
    from llmctl.model_defs import transformers_backend as tb
    from llmctl.model_defs.layers.context import AttentionMetadata, ForwardContext

    folder, hf = olmo3
    config = load_hf_config(folder)
    model = build_model(config, tb.TransformersForCausalLM, torch.float32, "cpu", iter_safetensors(folder))
    spec = kv_cache_spec(model, torch.float32)
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == (2, 2, 8)
    block = 4
    caches = [torch.zeros(2, 16, block, spec.num_kv_heads, spec.head_dim) for _ in range(spec.num_layers)]
    ids, pos, slots, starts, tables, next_block = [], [], [], [0], [], 0
    for prompt in PROMPTS:
        n_blocks = -(-len(prompt) // block)
        table = list(range(next_block, next_block + n_blocks))
        next_block += n_blocks
        ids += prompt
        pos += range(len(prompt))
        slots += [table[p // block] * block + p % block for p in range(len(prompt))]
        starts.append(starts[-1] + len(prompt))
        tables.append(table + [0] * (4 - n_blocks))
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor([len(p) for p in PROMPTS], dtype=torch.int32),
        slot_mapping=torch.tensor(slots),
        block_tables=torch.tensor(tables, dtype=torch.int32),
        max_query_len=max(map(len, PROMPTS)),
        max_seq_len=max(map(len, PROMPTS)),
    )
    masks = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return tb.llmctl_attention(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, tb.ATTN_IMPLEMENTATION, spy)
    with torch.inference_mode():
        hidden = model(torch.tensor(ids), torch.tensor(pos), ForwardContext(meta, caches))
        logits = model.compute_logits(hidden)
    assert len(masks) == 2 and all(m is None for m in masks)  # each layer once, and no (T, T) mask anywhere
    for i, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            ref = hf(torch.tensor([prompt])).logits[0]
        # float32 both sides; the sums run in another order (packed einsum vs batched matmul): a few ulps.
        torch.testing.assert_close(logits[starts[i] : starts[i + 1]], ref, atol=1e-4, rtol=1e-4)


def test_native_arch_through_transformers_matches_native(llama):
    folder, _ = llama
    native_llm, native = _generate(folder, model_impl="native")
    tf_llm, through_tf = _generate(folder, model_impl="transformers")
    assert native_llm.model_impl == "native" and tf_llm.model_impl == "transformers"
    for a, b in zip(native, through_tf):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for lp_a, lp_b in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert lp_a.keys() == lp_b.keys()


def test_native_on_transformers_only_arch_is_a_clear_error(olmo3):
    from llmctl import LLM
    from llmctl.core.errors import UnsupportedModelError

    folder, _ = olmo3
    with pytest.raises(UnsupportedModelError) as info:
        LLM(str(folder), **ENGINE, model_impl="native")
    assert "no native model definition" in str(info.value)
    assert "transformers" in (info.value.hint or "")


def test_model_impl_choice():
    from llmctl.core.errors import UnsupportedModelError
    from llmctl.core.registry import implementation_for

    assert implementation_for("LlamaForCausalLM") == "native"
    assert implementation_for("LlamaForCausalLM", "transformers", model_type="llama") == "transformers"
    assert implementation_for("Olmo3ForCausalLM", model_type="olmo3") == "transformers"
    with pytest.raises(UnsupportedModelError):  # transformers' StableLm does not use the attention interface
        implementation_for("StableLmForCausalLM", model_type="stablelm")
    # transformers fuses Mixtral's experts on load: the backend loads through from_pretrained, so that applies
    assert implementation_for("MixtralForCausalLM", model_type="mixtral") == "transformers"
    with pytest.raises(UnsupportedModelError) as info:  # unknown everywhere: the registry's error
        implementation_for("NoSuchModelForCausalLM", model_type="nosuch")
    assert "native today" in (info.value.hint or "")
    with pytest.raises(UnsupportedModelError):
        implementation_for("DeepseekForCausalLM", model_type="deepseek", remote_code=True)
    assert implementation_for("DeepseekForCausalLM", remote_code=True, trust_remote_code=True) == "transformers"
    with pytest.raises(UnsupportedModelError):
        implementation_for("LlamaForCausalLM", "bogus")


def _check_json(folder, *args):
    from typer.testing import CliRunner

    from llmctl.cli.app import app

    result = CliRunner().invoke(app, ["check", str(folder), "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def _config_only(tmp_path, name, config):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_check_reports_transformers_backend(tmp_path):
    cfg = {**TINY, "architectures": ["Olmo3ForCausalLM"], "model_type": "olmo3", "torch_dtype": "bfloat16"}
    code, data = _check_json(_config_only(tmp_path, "olmo3", cfg))
    assert code == 0
    assert data["supported"] is True and data["implementation"] == "transformers"
    assert data["verification"] == "strict" and data["tasks"] == ["generate"]
    assert "transformers backend" in data["note"] and "native kernels" in data["note"]
    code, data = _check_json(_config_only(tmp_path, "olmo3e", cfg), "--task", "embed")
    assert code == 1 and data["supported"] is False
    # transformers' StableLm attends without the attention interface: no backend, and check says why.
    cfg = {**TINY, "architectures": ["StableLmForCausalLM"], "model_type": "stablelm"}
    code, data = _check_json(_config_only(tmp_path, "slm", cfg))
    assert code == 1 and data["implementation"] == "none" and data["note"] is None
    assert any("attention interface" in r for r in data["reasons"])


def test_check_remote_code_needs_trust(tmp_path):
    cfg = {**TINY, "architectures": ["DeepseekForCausalLM"], "model_type": "deepseek",
           "auto_map": {"AutoModelForCausalLM": "modeling_deepseek.DeepseekForCausalLM"}}  # fmt: skip
    folder = _config_only(tmp_path, "ds", cfg)
    code, data = _check_json(folder)
    assert code == 1 and data["needs_trust_remote_code"] is True and data["implementation"] == "none"
    code, data = _check_json(folder, "--trust-remote-code")
    assert code == 0 and data["implementation"] == "transformers" and "repo's own model code" in data["note"]


def test_check_verdict_imports_neither_torch_nor_transformers(tmp_path):
    cfg = {**TINY, "architectures": ["Olmo3ForCausalLM"], "model_type": "olmo3"}
    folder = _config_only(tmp_path, "olmo3", cfg)
    code = (
        "import sys; from llmctl.core.spec import load_spec; from llmctl.core.resolve import resolve_model;"
        "from llmctl.core.support import verdict;"
        f"v = verdict(load_spec(resolve_model({str(folder)!r})));"
        "assert v.implementation == 'transformers', v;"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_strict_transformers_rows_have_consistency_tests():
    """Strict rows are held to transformers here or by test_check_truth.py (every case of backend_cases.py)."""
    import importlib.util
    from pathlib import Path

    from llmctl.core.registry import LEVELS, TRANSFORMERS_VERIFIED

    spec = importlib.util.spec_from_file_location("backend_cases", Path(__file__).with_name("backend_cases.py"))
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    assert set(TRANSFORMERS_VERIFIED.values()) <= set(LEVELS)
    strict = {arch for arch, level in TRANSFORMERS_VERIFIED.items() if level == "strict"}
    assert strict <= set(CONSISTENCY_ARCHITECTURES) | set(cases.VLLM_TEXT_GENERATION)
