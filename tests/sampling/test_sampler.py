"""Sampler: greedy, filtered distributions against a plain reference, seeds, penalties, min_tokens, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from llmctl.core.engine.sampler import Sampler, SamplingState, apply_min_tokens, apply_penalties
from llmctl.core.engine.sampling_params import SamplingParams


def fixed_logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g, dtype=torch.float32) * 2.0


def state(prompt=(1, 2), output=(), eos=(0,), **params) -> SamplingState:
    return SamplingState(SamplingParams(**params), list(prompt), list(output), tuple(eos))


def reference_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Plain one-row reference in float64: each filter written out on its own."""
    x = logits.double() / temperature
    probs = torch.softmax(x, dim=-1)
    if top_k > 0:
        kth = torch.sort(x, descending=True).values[top_k - 1]
        probs = torch.where(x >= kth, probs, 0.0)
        probs = probs / probs.sum()
    if top_p < 1.0:
        keep = torch.zeros_like(probs, dtype=torch.bool)
        mass = 0.0
        for idx in torch.argsort(probs, descending=True).tolist():
            if mass >= top_p or probs[idx] == 0:
                break
            keep[idx] = True
            mass += probs[idx].item()
        probs = torch.where(keep, probs, 0.0)
        probs = probs / probs.sum()
    if min_p > 0.0:
        probs = torch.where(probs >= min_p * probs.max(), probs, 0.0)
        probs = probs / probs.sum()
    return probs


def test_greedy_is_argmax():
    logits = fixed_logits(5, 100)
    states = [state(temperature=0.0) for _ in range(5)]
    out = Sampler(seed=0).sample(logits, states)
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.logprobs == [None] * 5


def test_greedy_rows_unaffected_by_random_rows_and_logits_untouched():
    logits = fixed_logits(4, 50, seed=1)
    before = logits.clone()
    states = [state(temperature=0.0), state(temperature=1.3, top_k=5), state(temperature=0.0), state(top_p=0.5)]
    out = Sampler(seed=0).sample(logits, states)
    assert out.token_ids[0] == logits[0].argmax().item()
    assert out.token_ids[2] == logits[2].argmax().item()
    assert torch.equal(logits, before)


FILTERS = [
    # (temperature, top_k, top_p, min_p)
    (1.0, 0, 1.0, 0.0),
    (0.7, 5, 1.0, 0.0),
    (1.0, -1, 0.6, 0.0),
    (1.5, 0, 1.0, 0.2),
    (0.9, 8, 0.8, 0.05),
    (2.0, 1, 1.0, 0.0),
    (0.5, 0, 0.3, 0.3),
]


def test_filtered_distribution_matches_reference_per_row():
    # One batch with different filters on each row: the per-row tensors must not mix rows.
    logits = fixed_logits(len(FILTERS), 40, seed=2)
    states = [state(temperature=t, top_k=k, top_p=p, min_p=m) for t, k, p, m in FILTERS]
    probs = Sampler(seed=0).filtered_probs(logits, states)
    for i, (t, k, p, m) in enumerate(FILTERS):
        ref = reference_probs(logits[i], t, k, p, m).float()
        # float32 softmax of 40 logits vs float64: agreement to ~1e-7; 1e-6 leaves room.
        torch.testing.assert_close(probs[i], ref, rtol=0, atol=1e-6)
        assert torch.equal(probs[i] > 0, ref > 0), f"row {i} keeps a different token set"


def test_empirical_frequencies_match_filtered_distribution():
    # 20000 draws of one fixed row (as 20000 batch rows, one call). Each token's frequency must
    # lie within 5 binomial standard deviations of its probability: with 8 tokens a correct
    # sampler fails this with probability < 1e-5, and the seeded generator makes it repeatable.
    # Tokens filtered out must never be drawn.
    n, vocab = 20000, 8
    row = torch.tensor([[2.0, 1.5, 1.0, 0.8, 0.3, -0.5, -1.0, -3.0]])
    t, k, p, m = 0.8, 6, 0.9, 0.05
    states = [state(temperature=t, top_k=k, top_p=p, min_p=m) for _ in range(n)]
    out = Sampler(seed=1234).sample(row.expand(n, vocab), states)
    freq = torch.bincount(torch.tensor(out.token_ids), minlength=vocab).double() / n
    ref = reference_probs(row[0], t, k, p, m)
    assert (ref == 0).sum() >= 2, "the filters should remove some tokens for this test to mean something"
    for tok in range(vocab):
        pr = ref[tok].item()
        if pr == 0.0:
            assert freq[tok] == 0.0
        else:
            assert abs(freq[tok].item() - pr) <= 5 * math.sqrt(pr * (1 - pr) / n), (tok, freq[tok], pr)


def run_steps(sampler: Sampler, states: list[SamplingState], steps: int, vocab: int) -> list[list[int]]:
    """Decode `steps` tokens; each row's logits depend only on the step (and row key), not on the batch."""
    tokens: list[list[int]] = [[] for _ in states]
    for step in range(steps):
        logits = torch.stack([fixed_logits(1, vocab, seed=1000 * step + s.prompt_token_ids[0])[0] for s in states])
        out = sampler.sample(logits, states)
        for i, (s, tok) in enumerate(zip(states, out.token_ids)):
            s.output_token_ids.append(tok)
            tokens[i].append(tok)
    return tokens


def test_seeded_rows_repeat_whatever_the_batch():
    vocab, steps = 500, 12
    # Batch A: the seed-42 request first, beside an unseeded row and another seeded one.
    batch_a = [state(prompt=(7,), seed=42), state(prompt=(8,)), state(prompt=(9,), seed=3, top_k=20)]
    # Batch B: the same request (same logits: same prompt key) in another position, other neighbours,
    # and a differently seeded engine generator.
    batch_b = [state(prompt=(5,), temperature=0.5), state(prompt=(6,), seed=1), state(prompt=(7,), seed=42)]
    alone = [state(prompt=(7,), seed=42)]
    a = run_steps(Sampler(seed=0), batch_a, steps, vocab)
    b = run_steps(Sampler(seed=99), batch_b, steps, vocab)
    c = run_steps(Sampler(seed=5), alone, steps, vocab)
    assert a[0] == b[2] == c[0]
    # A different seed on the same logits gives a different sequence (flat-ish logits over 500 tokens).
    other = run_steps(Sampler(seed=0), [state(prompt=(7,), seed=43)], steps, vocab)
    assert other[0] != a[0]


def test_unseeded_rows_follow_the_engine_seed():
    vocab, steps = 500, 8
    a = run_steps(Sampler(seed=11), [state(prompt=(3,)), state(prompt=(4,))], steps, vocab)
    b = run_steps(Sampler(seed=11), [state(prompt=(3,)), state(prompt=(4,))], steps, vocab)
    c = run_steps(Sampler(seed=12), [state(prompt=(3,)), state(prompt=(4,))], steps, vocab)
    assert a == b
    assert a != c


def test_penalties_against_hand_computed_values():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.2], [2.0, -1.0, 0.5, 3.0, -2.0, 1.2]])
    states = [
        state(prompt=(0, 1), output=(3, 3, 4), repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25),
        state(prompt=(0, 1), output=(3, 3, 4)),
    ]
    out = apply_penalties(logits.clone(), states)
    # Row 0, by hand. Repetition 2.0 over prompt+output {0, 1, 3, 4}: 2/2=1, -1*2=-2, 3/2=1.5, -2*2=-4.
    # Then output counts {3: 2, 4: 1}: 1.5 - 0.25*2 - 0.5 = 0.5 and -4 - 0.25*1 - 0.5 = -4.75.
    expected0 = torch.tensor([1.0, -2.0, 0.5, 0.5, -4.75, 1.2])
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[1], logits[1])  # no penalties: unchanged
    greedy = Sampler(seed=0).sample(logits, [state(prompt=(0, 1), output=(3, 3, 4), temperature=0.0,
                                                   repetition_penalty=2.0, presence_penalty=0.5,
                                                   frequency_penalty=0.25), state(temperature=0.0)])
    assert greedy.token_ids == [5, 3]


def test_presence_penalty_ignores_prompt_tokens():
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    out = apply_penalties(logits.clone(), [state(prompt=(0,), output=(1,), presence_penalty=1.0)])
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.0, 1.0]))


def test_min_tokens_masks_eos_and_stop_tokens():
    logits = torch.tensor([[0.0, 0.1, 0.2, 0.3, 9.0, 10.0]])  # 5 = EOS, 4 = a stop token
    sampler = Sampler(seed=0)

    def pick(output, **params):
        s = state(output=output, eos=(5,), temperature=0.0, stop_token_ids=[4], **params)
        return sampler.sample(logits, [s]).token_ids[0]

    assert pick((), min_tokens=2) == 3
    assert pick((1,), min_tokens=2) == 3
    assert pick((1, 1), min_tokens=2) == 5
    assert pick((), min_tokens=0) == 5
    # ignore_eos: EOS does not end the request, so it is not masked; the stop token still is.
    assert pick((), min_tokens=2, ignore_eos=True) == 5
    # Random rows too: EOS and the stop token get probability 0.
    rows = [state(eos=(5,), stop_token_ids=[4], min_tokens=3) for _ in range(300)]
    out = sampler.sample(logits.expand(300, 6), rows)
    assert not {4, 5} & set(out.token_ids)


def test_min_tokens_mask_repeats_exactly_across_steps_and_dtypes():
    """The mask's device tensors are reused from step to step: every call masks its own logits (in place or not),
    in their dtype, and later calls with other rows or ids are not confused with earlier ones."""
    states = [state(eos=(5,), stop_token_ids=[1], min_tokens=4), state(eos=(5,), min_tokens=0),
              state(eos=(2,), min_tokens=4)]
    for dtype in (torch.float32, torch.bfloat16, torch.float32):
        logits = torch.randn(3, 6).to(dtype)
        before = logits.clone()
        out = apply_min_tokens(logits, states)
        assert torch.equal(logits, before)  # not in place: the input is left alone
        expected = before.clone()
        expected[0, [1, 5]] = -float("inf")
        expected[2, 2] = -float("inf")
        assert out.dtype == dtype and torch.equal(out, expected)
        assert apply_min_tokens(logits, states, inplace=True) is logits and torch.equal(logits, expected)
    swapped = [states[2], states[1], states[0]]  # the same ids on other rows
    out = apply_min_tokens(torch.zeros(3, 6), swapped)
    assert torch.isinf(out).nonzero().tolist() == [[0, 2], [2, 1], [2, 5]]


def test_logprobs_are_raw_top_k_with_ranks():
    logits = fixed_logits(3, 30, seed=4)
    states = [
        state(output=(2, 2), temperature=0.7, repetition_penalty=1.8, top_k=4, logprobs=3),
        state(temperature=0.0, logprobs=0),
        state(temperature=0.0),
    ]
    out = Sampler(seed=0).sample(logits, states)
    raw = torch.log_softmax(logits, dim=-1)
    lp0 = out.logprobs[0]
    top = torch.topk(raw[0], 3)
    for rank, (tid, value) in enumerate(zip(top.indices.tolist(), top.values.tolist()), start=1):
        assert lp0[tid][1] == rank
        assert lp0[tid][0] == pytest.approx(value, abs=1e-6)
    tok = out.token_ids[0]
    assert lp0[tok][0] == pytest.approx(raw[0, tok].item(), abs=1e-6)
    assert lp0[tok][1] == 1 + int((raw[0] > raw[0, tok]).sum())
    assert set(lp0) == set(top.indices.tolist()) | {tok}
    # logprobs=0: only the sampled token (greedy: rank 1); None: no dict.
    assert out.logprobs[1] == {out.token_ids[1]: (pytest.approx(raw[1].max().item(), abs=1e-6), 1)}
    assert out.logprobs[2] is None


def test_logprobs_whole_vocabulary():
    logits = fixed_logits(1, 12, seed=5)
    out = Sampler(seed=0).sample(logits, [state(logprobs=-1)])
    assert sorted(rank for _, rank in out.logprobs[0].values()) == list(range(1, 13))


def test_prompt_logprobs():
    prompt = [3, 7, 1, 9, 4]
    logits = fixed_logits(len(prompt), 16, seed=6)
    result = Sampler().prompt_logprobs(logits, prompt, 2)
    raw = torch.log_softmax(logits, dim=-1)
    assert len(result) == len(prompt) and result[0] is None
    for j in range(1, len(prompt)):
        entry = result[j]
        row = raw[j - 1]  # logits row j-1 predicts prompt token j
        assert entry[prompt[j]][0] == pytest.approx(row[prompt[j]].item(), abs=1e-6)
        assert entry[prompt[j]][1] == 1 + int((row > row[prompt[j]]).sum())
        top = torch.topk(row, 2).indices.tolist()
        assert [entry[t][1] for t in top] == [1, 2]
        assert set(entry) == set(top) | {prompt[j]}
    # L = len(prompt) - 1 rows are enough; fewer are an error.
    assert Sampler().prompt_logprobs(logits[:4], prompt, 2) == result
    with pytest.raises(ValueError):
        Sampler().prompt_logprobs(logits[:3], prompt, 2)
    assert Sampler().prompt_logprobs(logits[:1], [5], 2) == [None]


def test_token_counts_ignore_out_of_range_ids_and_empty_rows():
    from llmctl.core.engine.sampler import _token_counts

    counts = _token_counts([[], [1, 1, 7, -1, 4]], 5, torch.device("cpu"))
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0, 1.0]])
    assert torch.equal(counts, expected)


def test_filtered_probs_stay_finite_for_greedy_rows():
    probs = Sampler().filtered_probs(fixed_logits(2, 10), [state(temperature=0.0), state(top_k=3)])
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(2))
