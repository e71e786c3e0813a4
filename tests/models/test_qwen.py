"""Qwen (v1, QWenLMHeadModel) without its repo's code: strict against transformers' Qwen2 within seq_length.

transformers has no Qwen v1 class, so a tiny Qwen2ForCausalLM with q/k/v biases and as many k/v heads as query
heads is rewritten into Qwen v1's layout and config.json (c_attn, w1/w2, hub keys and auto_map) and llmctl's run
of it is held to transformers' run of the original. logn attention scaling past seq_length has no transformers
counterpart: it is checked against the plain-torch reference below, written from the remote modeling_qwen.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

# --import-mode=importlib and no __init__.py: the helper modules are loaded by path.
_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
_spec = importlib.util.spec_from_file_location("cases", Path(__file__).with_name("cases.py"))
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)

# Read by tests/models/test_registry.py: the strict row is held to transformers here.
CONSISTENCY_ARCHITECTURES = ["QWenLMHeadModel"]

HEADS, HEAD_DIM, HIDDEN, INTER, LAYERS, VOCAB = 4, 16, 64, 96, 2, 320
QWEN2 = cases.Case(
    "Qwen2Config",
    dict(cases._NO_SPECIAL, vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
         num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=256, rms_norm_eps=1e-5,
         tie_word_embeddings=False),
    dict(rope_theta=10000.0, rope_scaling=None), ("rope_parameters",),
)  # fmt: skip
AUTO_MAP = {"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}


def qwen_v1_config(seq_length: int, max_position_embeddings: int, **overrides) -> dict:
    """config.json as Qwen/Qwen-7B's hub file spells it, for the tiny sizes."""
    return {
        "architectures": ["QWenLMHeadModel"], "auto_map": AUTO_MAP, "model_type": "qwen", "attn_dropout_prob": 0.0,
        "bf16": False, "emb_dropout_prob": 0.0, "fp16": False, "fp32": False, "hidden_size": HIDDEN,
        "initializer_range": 0.02, "intermediate_size": 2 * INTER, "kv_channels": HEAD_DIM, "layer_norm_epsilon": 1e-5,
        "max_position_embeddings": max_position_embeddings, "no_bias": True, "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS, "onnx_safe": None, "rotary_emb_base": 10000, "rotary_pct": 1.0,
        "scale_attn_weights": True, "seq_length": seq_length, "tie_word_embeddings": False,
        "tokenizer_class": "QWenTokenizer", "transformers_version": "4.32.0", "use_cache": True,
        "use_dynamic_ntk": True, "use_flash_attn": "auto", "use_logn_attn": True, "vocab_size": VOCAB, **overrides,
    }  # fmt: skip


def to_qwen_v1(qwen2: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Qwen2 (MHA) state dict in Qwen v1's names: q|k|v stacked into c_attn, gate -> w2, up -> w1."""
    out = {"transformer.wte.weight": qwen2["model.embed_tokens.weight"],
           "transformer.ln_f.weight": qwen2["model.norm.weight"], "lm_head.weight": qwen2["lm_head.weight"]}
    for i in range(LAYERS):
        src, dst = f"model.layers.{i}.", f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            parts = [qwen2[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{dst}attn.c_attn.{kind}"] = torch.cat(parts)
        out[f"{dst}attn.c_proj.weight"] = qwen2[f"{src}self_attn.o_proj.weight"]
        out[f"{dst}ln_1.weight"] = qwen2[f"{src}input_layernorm.weight"]
        out[f"{dst}ln_2.weight"] = qwen2[f"{src}post_attention_layernorm.weight"]
        out[f"{dst}mlp.w2.weight"] = qwen2[f"{src}mlp.gate_proj.weight"]  # w1(x) * silu(w2(x)): w2 is the gate
        out[f"{dst}mlp.w1.weight"] = qwen2[f"{src}mlp.up_proj.weight"]
        out[f"{dst}mlp.c_proj.weight"] = qwen2[f"{src}mlp.down_proj.weight"]
    return {k: v.contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def qwen2_path(tmp_path_factory) -> Path:
    return harness.write_checkpoint("qwen2_mha", QWEN2, tmp_path_factory.mktemp("qwen2_mha"))


@pytest.fixture(scope="module")
def hf(qwen2_path):
    return harness.load_hf(qwen2_path)


def write_qwen_v1(qwen2_path: Path, out: Path, config: dict) -> Path:
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(to_qwen_v1(load_file(qwen2_path / "model.safetensors")), out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="module")
def qwen_path(qwen2_path, tmp_path_factory) -> Path:
    # seq_length 64 holds every prompt and its completion: logn and dynamic NTK do not act.
    return write_qwen_v1(qwen2_path, tmp_path_factory.mktemp("qwen_v1"), qwen_v1_config(64, 256))


def load_ours(path: Path):
    from llmctl.core.engine.loader import build_model, iter_safetensors
    from llmctl.core.engine.model_source import load_hf_config

    config = load_hf_config(path)  # config.json alone: the repo's configuration_qwen.py is never run
    return build_model(config, harness.model_class(config), torch.float32, "cpu", iter_safetensors(path)), config


@pytest.fixture(scope="module")
def ours(qwen_path):
    return load_ours(qwen_path)


def test_prefill_and_chunked_prefill_match_qwen2(ours, hf):
    model, config = ours
    driver = harness.PagedDriver(model, config)
    logits = driver.logits([(harness.Seq(tokens=list(p), prompt_len=len(p)), len(p)) for p in harness.PROMPTS])
    start = 0
    for prompt in harness.PROMPTS:
        torch.testing.assert_close(logits[start : start + len(prompt)], harness.hf_logits(hf, prompt), **harness.TOL)
        start += len(prompt)
    prompt = harness.PROMPTS[0]
    driver = harness.PagedDriver(model, config, block_size=4)
    seq, chunks = harness.Seq(tokens=list(prompt), prompt_len=len(prompt)), []
    while seq.computed < len(prompt):
        chunks.append(driver.logits([(seq, min(3, len(prompt) - seq.computed))]))
    torch.testing.assert_close(torch.cat(chunks), harness.hf_logits(hf, prompt), **harness.TOL)


@pytest.mark.parametrize("chunk_size", [None, 4], ids=["full-prefill", "chunked-prefill"])
def test_greedy_matches_qwen2(ours, hf, chunk_size):
    model, config = ours
    seqs = harness.PagedDriver(model, config, block_size=4).greedy(harness.PROMPTS, harness.MAX_NEW_TOKENS, chunk_size)
    for seq, prompt in zip(seqs, harness.PROMPTS):
        harness.check_greedy_close(seq, *harness.hf_greedy(hf, prompt))


def test_llm_generate_matches_qwen2_without_remote_code(qwen_path, hf):
    from llmctl import LLM, SamplingParams

    llm = LLM(str(qwen_path), dtype="float32", device="cpu", skip_tokenizer_init=True,
              max_model_len=64, block_size=4, max_num_batched_tokens=8, max_num_seqs=2, num_kv_blocks=64)
    assert llm.model_impl == "native"
    params = SamplingParams(temperature=0.0, max_tokens=harness.MAX_NEW_TOKENS, ignore_eos=True,
                            logprobs=harness.TOP_K)
    outs = llm.generate([{"prompt_token_ids": p} for p in harness.PROMPTS], params)
    for out, prompt in zip(outs, harness.PROMPTS):
        harness.check_completion_close(out.outputs[0], *harness.hf_greedy(hf, prompt))


def test_layout_cache_and_check(ours, qwen_path, hf):
    from llmctl.core.estimate import count_parameters
    from llmctl.core.spec import spec_from_config

    model, _ = ours
    block = model.transformer.h[0]
    assert block.attn.c_attn.bias is not None and block.attn.c_proj.bias is None  # no_bias spares c_attn
    assert block.mlp.gate_up_proj.weight.shape == (2 * INTER, HIDDEN)  # intermediate_size counts both halves
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.kv_cache_shape() == (LAYERS, HEADS, HEAD_DIM)
    data = json.loads((qwen_path / "config.json").read_text())
    spec = spec_from_config(data)
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.intermediate_size) == (
        LAYERS, HEADS, HEAD_DIM, INTER)
    assert count_parameters(spec) == sum(p.numel() for p in hf.parameters())

    from typer.testing import CliRunner

    from llmctl.cli.app import app

    result = CliRunner().invoke(app, ["check", str(qwen_path), "--json"])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["implementation"] == "native" and verdict["supported"]
    assert verdict["needs_trust_remote_code"] is False and verdict["verification"] == "strict"


def test_dynamic_ntk_limits_the_prompt_to_seq_length(qwen2_path, hf, tmp_path):
    """Qwen-7B's hub config: max_position_embeddings 32768, seq_length 8192, use_dynamic_ntk. A prompt past
    seq_length is refused (its rope base would depend on its length); a shorter one generates past seq_length."""
    from llmctl import LLM, SamplingParams
    from llmctl.core.spec import spec_from_config

    config = qwen_v1_config(12, 256)
    path = write_qwen_v1(qwen2_path, tmp_path / "ntk", config)
    spec = spec_from_config(config)
    assert spec.max_position_embeddings == 256 and any("dynamic NTK" in note for note in spec.notes)
    assert not any("dynamic NTK" in n for n in spec_from_config(dict(config, use_dynamic_ntk=False)).notes)
    llm = LLM(str(path), dtype="float32", device="cpu", skip_tokenizer_init=True, max_model_len=64,
              block_size=4, num_kv_blocks=64)
    assert llm.llm_engine.max_prompt_len == 12
    params = SamplingParams(temperature=0.0, max_tokens=harness.MAX_NEW_TOKENS, ignore_eos=True)
    long_prompt, short_prompt = harness.PROMPTS[0][:13], harness.PROMPTS[0][:10]
    refused, ran = llm.generate([{"prompt_token_ids": long_prompt}, {"prompt_token_ids": short_prompt}], params)
    assert "at most 12" in refused.error
    assert ran.error is None
    # Positions 12..17 are past seq_length: logn-scaled queries, the rope as is (the reference below).
    from safetensors.torch import load_file

    tokens = short_prompt + list(ran.outputs[0].token_ids)
    expected = reference_logits(load_file(path / "model.safetensors"), config, tokens)
    assert expected[len(short_prompt) - 1 :].argmax(-1)[:-1].tolist() == list(ran.outputs[0].token_ids)


def reference_logits(state: dict[str, torch.Tensor], config: dict, ids: list[int]) -> torch.Tensor:
    """Qwen v1's forward in plain torch, as modeling_qwen.py computes it for one prompt: (len, V)."""
    n, hd, eps = len(ids), config["kv_channels"], config["layer_norm_epsilon"]
    seq_length, heads = config["seq_length"], config["num_attention_heads"]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    inv_freq = 1.0 / config["rotary_emb_base"] ** (torch.arange(0, hd, 2).float() / hd)
    angles = torch.outer(torch.arange(n).float(), inv_freq)
    cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None], torch.cat([angles.sin()] * 2, -1)[:, None]

    def rope(x):  # (n, heads, hd), rotate_half
        half = torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
        return x * cos + half * sin

    logn = torch.tensor([math.log(i, seq_length) if i > seq_length else 1.0 for i in range(1, n + 1)])
    x = state["transformer.wte.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        qkv = rms(x, state[p + "ln_1.weight"]) @ state[p + "attn.c_attn.weight"].T + state[p + "attn.c_attn.bias"]
        q, k, v = (t.reshape(n, heads, hd) for t in qkv.chunk(3, -1))
        q, k = rope(q) * logn[:, None, None], rope(k)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, heads * hd)
        x = x + attn @ state[p + "attn.c_proj.weight"].T
        h = rms(x, state[p + "ln_2.weight"])
        up, gate = h @ state[p + "mlp.w1.weight"].T, h @ state[p + "mlp.w2.weight"].T
        x = x + (up * torch.nn.functional.silu(gate)) @ state[p + "mlp.c_proj.weight"].T
    return rms(x, state["transformer.ln_f.weight"]) @ state["lm_head.weight"].T


def test_logn_scaling_past_seq_length_matches_the_reference(qwen2_path, hf, tmp_path):
    """seq_length 6 with use_dynamic_ntk off: positions 6.. are logn-scaled, through the cache and without."""
    from safetensors.torch import load_file

    config = qwen_v1_config(6, 256, use_dynamic_ntk=False)
    path = write_qwen_v1(qwen2_path, tmp_path / "logn", config)
    model, hf_config = load_ours(path)
    state = load_file(path / "model.safetensors")
    prompt = harness.PROMPTS[0]
    expected = reference_logits(state, config, prompt)
    torch.testing.assert_close(harness.one_shot_logits(model, prompt), expected, **harness.TOL)
    driver = harness.PagedDriver(model, hf_config, block_size=4)
    seq, chunks = harness.Seq(tokens=list(prompt), prompt_len=len(prompt)), []
    while seq.computed < len(prompt):
        chunks.append(driver.logits([(seq, min(5, len(prompt) - seq.computed))]))
    torch.testing.assert_close(torch.cat(chunks), expected, **harness.TOL)
    # Up to seq_length the factor is 1 (transformers' Qwen2 agrees); past it, the scaling shows.
    qwen2 = harness.hf_logits(hf, prompt)
    torch.testing.assert_close(expected[:6], qwen2[:6], **harness.TOL)
    assert not torch.allclose(expected[6:], qwen2[6:], atol=1e-2)
    # use_logn_attn off: no scaling anywhere, Qwen2's function at every position.
    plain, _ = load_ours(write_qwen_v1(qwen2_path, tmp_path / "no-logn", dict(config, use_logn_attn=False)))
    torch.testing.assert_close(harness.one_shot_logits(plain, prompt), qwen2, **harness.TOL)


def test_repo_code_tokenizer_needs_the_flag(qwen_path, tmp_path):
    """Qwen v1 ships qwen.tiktoken with tokenization_qwen.py: without --trust-remote-code, one line naming the flag
    (the model itself needs no flag: token prompts run, as the LLM test above shows)."""
    import shutil

    from typer.testing import CliRunner

    from llmctl import LLM
    from llmctl.cli.app import app
    from llmctl.core.errors import UnsupportedModelError

    path = tmp_path / "with-tokenizer"
    shutil.copytree(qwen_path, path)
    (path / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]}, "tokenizer_class": "QWenTokenizer",
        "model_max_length": 8192}))  # fmt: skip
    (path / "qwen.tiktoken").write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(UnsupportedModelError, match="defined by code in the model's repo") as err:
        LLM(str(path), dtype="float32", device="cpu")
    assert "--trust-remote-code" in err.value.hint
    result = CliRunner().invoke(app, ["generate", "-m", str(path), "-p", "hello", "--device", "cpu", "--max-tokens", "2"])
    assert result.exit_code == UnsupportedModelError.exit_code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(lines) <= 2, result.stderr
    assert "--trust-remote-code" in result.stderr


def test_qwen_7b_hub_config_reads_without_torch():
    """Qwen/Qwen-7B's config.json: 7,721,324,544 parameters (its safetensors index: 15,442,649,088 bf16 bytes),
    MHA 32 x 128, an 11008-wide MLP, 32768 positions and prompts up to seq_length (use_dynamic_ntk)."""
    from llmctl.core.estimate import count_parameters
    from llmctl.core.spec import spec_from_config

    config = dict(qwen_v1_config(8192, 32768), hidden_size=4096, intermediate_size=22016, kv_channels=128,
                  layer_norm_epsilon=1e-6, num_attention_heads=32, num_hidden_layers=32, vocab_size=151936)
    spec = spec_from_config(config)
    assert count_parameters(spec) == 7_721_324_544
    assert (spec.num_kv_heads, spec.head_dim, spec.intermediate_size) == (32, 128, 11008)
    assert spec.max_position_embeddings == 32768 and any("at most seq_length (8192)" in n for n in spec.notes)
