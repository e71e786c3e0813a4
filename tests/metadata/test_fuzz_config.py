"""Fuzz the config reader: mutated hub configs through `check` and `inspect-arch` never end in an internal error.

Seeded, 460 cases: values of the wrong type, out of range, NaN and infinities, huge or deeply
nested values, per-layer lists, broken bytes and truncated JSON. Every run must end with a documented
exit code (0 or 1 with an answer, 3 for a model that cannot be read) and at most one error line: never
`internal error`, and never 2 (a usage error: the command line was fine, the model was not).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmctl.cli.app import app

CONFIG_DIR = Path(__file__).parent / "configs"  # real hub config.json files: the seeds
SEEDS = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
# Keys the readers look at, in every family's spelling, plus the nested objects they descend into.
KEYS = [
    "hidden_size", "n_embd", "d_model", "num_hidden_layers", "n_layer", "num_layers", "num_attention_heads", "n_head",
    "num_key_value_heads", "num_kv_heads", "multi_query_group_num", "intermediate_size", "n_inner", "ffn_dim",
    "vocab_size", "padded_vocab_size", "max_position_embeddings", "n_positions", "seq_length", "head_dim",
    "kv_channels", "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "rotary_pct",
    "rotary_dim", "sliding_window", "use_sliding_window", "layer_types", "torch_dtype", "dtype",
    "quantization_config", "tie_word_embeddings", "architectures", "model_type", "num_local_experts",
    "n_routed_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size", "n_shared_experts",
    "first_k_dense_replace", "moe_layer_freq", "decoder_sparse_step", "mlp_only_layers",
    "shared_expert_intermediate_size", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
    "v_head_dim", "text_config", "vision_config", "attn_config", "multi_query", "new_decoder_architecture",
    "alibi", "hidden_act", "activation_function", "rms_norm_eps", "layer_norm_eps", "auto_map",
    "attention_bias", "bias", "type_vocab_size", "num_decoder_layers", "decoder_layers", "expansion_ratio",
]


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(16)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2, 3, 7, 385, -(10**6), 10**12, 10**30, 2**63])
    if kind == 3:
        return rng.choice([0.5, -0.5, 1e-9, 1e308, 1.7, 64.0])
    if kind == 4:
        return rng.choice(["", "x", "four", "float128", "bfloat16", "llama", "\u00e9\u6771", "1e5", "NaN"])
    if kind == 5 and depth < 3:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6 and depth < 3:
        return {rng.choice(KEYS + ["factor", "rope_type", "bits", "type", "kv_n_heads"]): _value(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    if kind == 7:
        return json.loads("[" * 200 + "]" * 200)  # deeper than any config, shallower than json's limit
    if kind == 8:
        return [rng.randrange(1, 64) for _ in range(rng.randrange(1, 6))]  # a per-layer list
    if kind == 9:
        return {"rope_type": rng.choice(["linear", "dynamic", "yarn", "llama3", 3]),
                "factor": rng.choice([2.0, 0, -1, "x", None, 1e308])}
    if kind == 10:
        return {"quant_method": rng.choice(["gptq", "awq", "fp8", "bitsandbytes", 4]),
                "bits": rng.choice([4, 8, "four", 0, 99, 4.5, None]), "group_size": rng.choice([128, -1, 0, "x"])}
    if kind == 11:
        return float("nan") if rng.random() < 0.5 else float("inf")
    return rng.randrange(1, 4096)


def _config_bytes(rng: random.Random) -> bytes:
    config = json.loads((CONFIG_DIR / f"{rng.choice(SEEDS)}.json").read_text())
    target = config.get("text_config") if isinstance(config.get("text_config"), dict) and rng.random() < 0.3 else config
    for _ in range(rng.randrange(1, 6)):
        key = rng.choice(KEYS if rng.random() < 0.8 else list(target))
        if rng.random() < 0.15:
            target.pop(key, None)
        else:
            target[key] = _value(rng)
    raw = json.dumps(config, allow_nan=True).encode()  # NaN / Infinity as Python writes them
    damage = rng.randrange(12)
    if damage == 0:
        raw = raw[: rng.randrange(len(raw))]  # truncated
    elif damage == 1:
        at = rng.randrange(len(raw))
        raw = raw[:at] + bytes([rng.choice([0x00, 0x80, 0xC3, 0xFF, 0xED])]) + raw[at:]  # a byte that is not UTF-8
    elif damage == 2:
        raw = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # deeper than json's recursion limit
    elif damage == 3:
        raw = rng.choice([b"[]", b"null", b"42", b'"config"', b"", b"\xef\xbb\xbf{}"])
    return raw


def _ok(result) -> bool:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("llmctl: error:")]
    return (result.exit_code in (0, 1, 3) and not any("internal error" in line for line in lines)
            and len(errors) <= 1 and (result.exit_code != 3 or len(errors) == 1)
            and (result.exception is None or isinstance(result.exception, SystemExit)))


@pytest.mark.parametrize("block", range(4))
def test_mutated_configs_read_directly(tmp_path, block):
    """The readers behind check / inspect-arch / quantize-info, 100 configs a block: each either answers or
    raises an LlmctlError whose exit code is 1 or 3 (the CLI's mapping, core/errors.py), nothing else."""
    from llmctl.cli.inspect_arch import arch_report
    from llmctl.core.errors import LlmctlError
    from llmctl.core.estimate import kv_cache_bytes_per_token, parameter_count
    from llmctl.core.quant import quantization_from_source
    from llmctl.core.sources import LocalDirSource
    from llmctl.core.spec import load_spec
    from llmctl.core.support import verdict

    rng = random.Random(2600 + block)
    bad = []
    for case in range(100):
        raw = _config_bytes(rng)
        (tmp_path / "config.json").write_bytes(raw)
        source = LocalDirSource(str(tmp_path), tmp_path)
        # Each command's path on its own: one reader's refusal must not hide another's crash.
        steps = (
            lambda: arch_report(load_spec(source), source),  # inspect-arch
            lambda: quantization_from_source(source),  # quantize-info
            lambda: verdict(load_spec(source), quantization_from_source(source), max_model_len=64, gpu_memory_gib=1.0,
                            param_count=parameter_count(load_spec(source), source),
                            kv_bytes_per_token=kv_cache_bytes_per_token(load_spec(source))),  # check
        )
        for step in steps:
            try:
                step()
            except LlmctlError as err:
                if err.exit_code not in (1, 3) or "\n" in err.message:
                    bad.append((err.exit_code, err.message[:200], raw[:200]))
            except Exception as err:  # what the CLI would print as an internal error
                bad.append((type(err).__name__, str(err)[:200], raw[:200]))
    assert not bad, bad[:3]


def test_mutated_configs_through_the_cli(tmp_path):
    runner = CliRunner()
    rng = random.Random(1300)
    failures = []
    for case in range(60):  # 60 configs x 3 commands
        folder = tmp_path / f"m{case}"
        folder.mkdir()
        raw = _config_bytes(rng)
        (folder / "config.json").write_bytes(raw)
        for command in (["check", str(folder), "--json"], ["inspect-arch", str(folder), "--json"],
                        ["quantize-info", str(folder), "--json"]):
            result = runner.invoke(app, command)
            if not _ok(result):
                failures.append((command[0], result.exit_code, result.stderr.strip()[:300], raw[:300]))
    assert not failures, failures[:3]


def test_answers_hold_no_negative_or_non_finite_numbers(tmp_path):
    """What check / inspect-arch print as an answer (exit 0 or 1) holds only sane numbers: no negative
    parameter or byte counts, no NaN (the 'intermediate_size: -1 counted as negative parameters' class)."""
    runner = CliRunner()
    rng = random.Random(77)
    for case in range(60):
        folder = tmp_path / f"m{case}"
        folder.mkdir()
        (folder / "config.json").write_bytes(_config_bytes(rng))
        result = runner.invoke(app, ["inspect-arch", str(folder), "--json"])
        if result.exit_code != 0:
            continue
        stack = [json.loads(result.stdout)]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                assert math.isfinite(item) and item >= 0 or item == -1, (item, result.stdout[:400])
