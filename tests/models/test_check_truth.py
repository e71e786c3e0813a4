"""`check` tells the truth: for every architecture of vLLM's text-generation list the installed transformers can
build (tiny random checkpoints from backend_cases.py), `check` says supported exactly when a short generation
through llmctl runs and matches transformers' own greedy output, token for token and top-5 logprob for logprob;
where it says unsupported, `LLM(...)` refuses with the same reason before running anything, and so does the
transformers backend's own load-time check on the built model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch


def _load(name: str):
    # --import-mode=importlib and no __init__.py: helper modules are loaded by path.
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cases = _load("backend_cases")

PROMPTS = [[5, 9, 17, 33, 2, 64, 7, 100, 11, 3], [42, 8, 120]]  # past the sliding window (4); a short one beside
NEW_TOKENS = 4
ENGINE = dict(device="cpu", dtype="float32", skip_tokenizer_init=True, max_model_len=64, block_size=4, max_num_seqs=2)
MAX_PARAMS = 3_000_000  # a family whose tiny recipe still builds more than this is not tiny: skipped, and said
# float32 on both sides, the same layers in another order (packed batch, paged attention): logprobs agree to
# ~1e-6. State dropped between steps or a wrong window moves them by > 1e-1.
LOGPROB_TOL = 1e-3
# Fewer buildable cases than this means the installed transformers (or the recipe) lost coverage: say so.
MIN_COVERED = 70


def _architectures() -> list[str]:
    from llmctl.core.registry import GENERATE, all_architectures

    registry = [row.architecture for row in all_architectures() if GENERATE in row.tasks]
    return list(dict.fromkeys([*cases.VLLM_TEXT_GENERATION, *registry]))


ARCHITECTURES = _architectures()


def _build(architecture: str, out_dir: Path):
    """(folder, transformers model) of a tiny random float32 checkpoint; pytest.skip with the reason otherwise."""
    import transformers

    try:
        config = cases.tiny_config(architecture)
    except cases.NotBuildable as exc:
        pytest.skip(str(exc))
    cls = getattr(transformers, architecture)
    try:
        with torch.device("meta"):
            size = sum(p.numel() for p in cls._from_config(config).parameters())
    except ImportError as exc:  # a part transformers builds from another package (timm, PIL) not installed here
        pytest.skip(f"transformers cannot build {architecture} here: {str(exc).strip().splitlines()[0]}")
    if size > MAX_PARAMS:
        pytest.skip(f"{architecture}'s tiny recipe builds {size:,} parameters")
    torch.manual_seed(0)
    hf = cls._from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # HF init leaves biases 0 and norms 1: perturb every weight so that each matters
        for param in hf.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    hf.save_pretrained(out_dir)
    path = out_dir / "config.json"
    data = json.loads(path.read_text())
    data["torch_dtype"] = data.pop("dtype", None) or "float32"  # the key hub checkpoints carry
    path.write_text(json.dumps(data, indent=2))
    return out_dir, hf


def _check(folder) -> dict:
    from typer.testing import CliRunner

    from llmctl.cli.app import app

    result = CliRunner().invoke(app, ["check", str(folder), "--json"])
    assert result.exit_code in (0, 1), (result.exit_code, result.output)  # an answer, never an error
    data = json.loads(result.stdout)
    assert (result.exit_code == 0) == data["supported"]
    return data


def _hf_greedy(hf, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                          output_logits=True, return_dict_in_generate=True, eos_token_id=None,
                          pad_token_id=0)  # fmt: skip
    return out.sequences[0, len(prompt) :].tolist(), [torch.log_softmax(s[0].float(), -1) for s in out.logits]


def _assert_matches(completion, tokens: list[int], logprobs: list[torch.Tensor]) -> None:
    """Greedy tokens equal, and our top-5 logprobs equal transformers' for the same tokens, step by step.

    A near-tie may flip a token by rounding: then both tokens are in each other's top-5 and comparing stops.
    """
    assert len(completion.token_ids) == len(tokens) == NEW_TOKENS
    for step, (ours, theirs) in enumerate(zip(completion.token_ids, tokens)):
        top = completion.logprobs[step]
        for token, entry in top.items():
            assert abs(entry.logprob - logprobs[step][token].item()) < LOGPROB_TOL, (step, token)
        if ours != theirs:
            assert theirs in top and ours in logprobs[step].topk(5).indices.tolist(), (step, ours, theirs)
            return


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_check_verdict_matches_a_real_run(architecture, tmp_path):
    from llmctl import LLM, SamplingParams
    from llmctl.core.errors import UnsupportedModelError
    from llmctl.core.registry import TRANSFORMERS_VERIFIED, lookup

    folder, hf = _build(architecture, tmp_path / "model")
    verdict = _check(folder)
    try:
        llm = LLM(str(folder), **ENGINE)
    except UnsupportedModelError as exc:  # a refusal at construction, with check's reason
        assert not verdict["supported"], f"check says supported, LLM refuses: {exc}"
        backend = [r.split(": ", 1)[1] for r in verdict["reasons"] if r.startswith("the transformers backend cannot")]
        assert all(reason in str(exc) for reason in backend), (verdict["reasons"], str(exc))
        _assert_backend_refuses_at_load(hf, backend)
        return
    assert verdict["supported"], f"check says unsupported ({verdict['reasons']}), but it loads"
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=5)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    for prompt, output in zip(PROMPTS, outputs):
        _assert_matches(output.outputs[0], *_hf_greedy(hf, prompt))
    # The verification level is earned: strict where this test (or a native strict test) holds it to transformers.
    if verdict["implementation"] == "transformers":
        assert TRANSFORMERS_VERIFIED.get(architecture) == verdict["verification"] == "strict", architecture
    else:
        assert verdict["verification"] == lookup(architecture).level


def _assert_backend_refuses_at_load(hf, reasons: list[str]) -> None:
    """The backend's own check on the built model (module tree, transformers' cache layer kinds) refuses too."""
    from llmctl.core.errors import UnsupportedModelError
    from llmctl.model_defs.transformers_backend import TransformersForCausalLM

    if not reasons or not getattr(hf, "_supports_attention_backend", False):
        return  # refused before any model is built (no such class, or attention outside the interface)
    with pytest.raises(UnsupportedModelError, match="cannot run through the transformers backend|no base model"):
        TransformersForCausalLM(hf.config)


@pytest.mark.slow
def test_most_architectures_are_built():
    """The recipe keeps covering the list: a transformers upgrade that breaks many tiny configs is seen, not skipped."""
    built, not_built = [], {}
    for architecture in ARCHITECTURES:
        try:
            cases.tiny_config(architecture)
            built.append(architecture)
        except cases.NotBuildable as exc:
            not_built[architecture] = str(exc)
    assert len(built) >= MIN_COVERED, (len(built), not_built)


def test_strict_transformers_rows_are_covered_here():
    """Every architecture the registry calls strict through the backend is one this test builds and compares."""
    from llmctl.core.registry import TRANSFORMERS_VERIFIED

    strict = sorted(arch for arch, level in TRANSFORMERS_VERIFIED.items() if level == "strict")
    assert set(strict) <= set(ARCHITECTURES)
    for architecture in strict:
        assert cases.tiny_config(architecture).architectures == [architecture]  # NotBuildable would fail here
