"""Sampler: turns one engine step's logits into one token per request (penalties, filters, seeds, logprobs).

Interface (stable; the runner calls it once per step):

    state = SamplingState(params, prompt_token_ids, output_token_ids=[], eos_token_ids=(eos,))
    sampler = Sampler(seed=None)            # seed: the engine generator shared by unseeded rows
    out = sampler.sample(logits, states)    # logits: (B, V) float32, row i belongs to states[i]
    out.token_ids                           # list[int], one per row
    out.logprobs                            # per row: None, or {token_id: (logprob, rank)}
    sampler.prompt_logprobs(logits, prompt_token_ids, k)   # logits (L, V) -> [None, {..}, ...]

The sampler does not append the token to `state.output_token_ids`; the caller does, after
its stop checks. A seeded request gets its own `torch.Generator` (made on first use on the
logits' device and kept in `state.generator`), so the same seed gives the same tokens
whatever else is in the batch; unseeded rows share the sampler's generator.

Order of operations (vLLM's): on a float32 copy of the logits
  1. repetition penalty (HF's rule over prompt + output tokens: positive logits divided,
     negative multiplied), then presence and frequency penalties (OpenAI's rule over
     output tokens: logit -= frequency * count + presence * (count > 0));
  2. min_tokens: while fewer than min_tokens were generated, stop_token_ids and the EOS ids
     (unless ignore_eos) are masked to -inf;
  3. greedy rows (temperature 0) take the argmax here;
  4. temperature, then top-k, top-p and min-p, each with per-row values in tensors;
  5. sample by the exponential race: argmax(probs / q), q ~ Exp(1) per token, which draws
     from `probs` exactly and lets each seeded row draw q from its own generator.

Logprobs are computed from the log-softmax of the RAW logits, before penalties, masks and
temperature (vLLM's default, logprobs_mode="raw_logprobs"). Ranks are 1-based: the top-k
entries get 1..k in order, and the sampled token gets #(tokens with logprob >= its own), as vLLM
counts it, so without ties the most likely token has rank 1 either way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from llmctl.core.engine.sampling_params import SamplingParams
from llmctl.core.engine.staging import host_to_device
from llmctl.kernels.dispatch import get_op

Logprobs = dict[int, tuple[float, int]]


@dataclass
class SamplingState:
    """What the sampler needs to know about one running request."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    eos_token_ids: tuple[int, ...] = ()
    generator: torch.Generator | None = None  # made from params.seed on first use

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_ids, int):
            self.eos_token_ids = (self.eos_token_ids,)
        elif self.eos_token_ids is None:
            self.eos_token_ids = ()
        else:
            self.eos_token_ids = tuple(self.eos_token_ids)

    @property
    def stop_ids(self) -> set[int]:
        """stop_token_ids plus the EOS ids unless ignore_eos (computed once: params do not change)."""
        ids = self.__dict__.get("_stop_ids")
        if ids is None:
            ids = self.__dict__["_stop_ids"] = self.params.all_stop_token_ids(self.eos_token_ids)
        return ids

    def generator_for(self, device: torch.device) -> torch.Generator | None:
        """This request's own generator (seeded requests only), on `device`."""
        if self.params.seed is None:
            return None
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.params.seed)
        return self.generator


@dataclass
class SamplerOutput:
    """One step's result: a token per row and, for rows that asked, their logprobs."""

    token_ids: list[int]
    logprobs: list[Logprobs | None]


def _token_counts(rows: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """(B, V) float counts of each token id in each row; ids outside [0, V) are ignored."""
    flat = [t for r in rows for t in r]
    counts = torch.zeros(len(rows), vocab + 1, dtype=torch.float32, device=device)
    if not flat:
        return counts[:, :vocab]
    row_idx = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor([len(r) for r in rows]))
    ids = torch.tensor(flat, dtype=torch.long)
    ids = torch.where((ids >= 0) & (ids < vocab), ids, vocab)  # out of range -> the extra column, dropped
    counts.index_put_((row_idx.to(device), ids.to(device)), torch.ones(len(flat), device=device), accumulate=True)
    return counts[:, :vocab]


def apply_penalties(logits: torch.Tensor, states: list[SamplingState]) -> torch.Tensor:
    """Repetition (prompt + output, HF) then presence/frequency (output, OpenAI) on (B, V).

    Returns new logits when a penalty applies, else `logits` itself; the input is never modified.
    """
    B, V = logits.shape
    device = logits.device
    rep = [s.params.repetition_penalty for s in states]
    pres = [s.params.presence_penalty for s in states]
    freq = [s.params.frequency_penalty for s in states]
    out_counts = None
    if any(r != 1.0 for r in rep):
        out_counts = _token_counts([s.output_token_ids for s in states], V, device)
        seen = (_token_counts([s.prompt_token_ids for s in states], V, device) > 0) | (out_counts > 0)
        penalty = torch.tensor(rep, dtype=logits.dtype, device=device).unsqueeze(1)  # (B, 1)
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalized, logits)
    if any(p != 0.0 for p in pres) or any(f != 0.0 for f in freq):
        if out_counts is None:
            out_counts = _token_counts([s.output_token_ids for s in states], V, device)
        freq_t = torch.tensor(freq, dtype=logits.dtype, device=device).unsqueeze(1)
        pres_t = torch.tensor(pres, dtype=logits.dtype, device=device).unsqueeze(1)
        logits = logits - (freq_t * out_counts + pres_t * (out_counts > 0).to(logits.dtype))
    return logits


def _penalised(states: list[SamplingState]) -> bool:
    return any(
        s.params.repetition_penalty != 1.0 or s.params.presence_penalty != 0.0 or s.params.frequency_penalty != 0.0
        for s in states
    )


def apply_min_tokens(
    logits: torch.Tensor, states: list[SamplingState], pending: int = 0, inplace: bool = False
) -> torch.Tensor:
    """Mask stop_token_ids and EOS (unless ignore_eos) to -inf for rows still short of min_tokens.

    `pending` tokens per row were sampled but are not in output_token_ids yet (a step still in flight).
    Returns new logits when a row is masked, else `logits` itself; the input is modified only with inplace=True.
    """
    V = logits.shape[1]
    rows: list[int] = []
    cols: list[int] = []
    for i, s in enumerate(states):
        if len(s.output_token_ids) + pending < s.params.min_tokens:
            for t in s.stop_ids:
                if 0 <= t < V:
                    rows.append(i)
                    cols.append(t)
    if rows:
        index, minus_inf = _mask_tensors(tuple(rows), tuple(cols), logits.device, logits.dtype)
        put = logits.index_put_ if inplace else logits.index_put
        logits = put((index[0], index[1]), minus_inf)
    return logits


@functools.lru_cache(maxsize=64)
def _mask_tensors(
    rows: tuple[int, ...], cols: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (2, n) index and the n -inf values of a min_tokens mask, kept on the device: a batch masks the same
    positions step after step, and a fresh copy and fill per step cost more GPU time than the mask itself."""
    return host_to_device([list(rows), list(cols)], device), torch.full((len(rows),), -float("inf"), dtype=dtype,
                                                                         device=device)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """Mask (B, V) logits outside each row's top-k and top-p set to -inf.

    top_k: (B,) long, V for rows without top-k. Ties with the k-th value are kept.
    top_p: (B,) float, 1.0 for rows without top-p. A token is kept when the probability
    mass of the tokens strictly ahead of it (sorted, after top-k) is below top_p: the
    smallest set whose mass reaches top_p, and never less than the most likely token.
    """
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)  # (B, V)
    if top_k is not None:
        kth = sorted_logits.gather(1, (top_k - 1).clamp(0, logits.shape[1] - 1).unsqueeze(1))  # (B, 1)
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, -float("inf"))
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        mass_ahead = probs.cumsum(dim=-1) - probs  # (B, V) exclusive cumulative sum
        drop = (mass_ahead >= top_p.unsqueeze(1)) & (top_p < 1.0).unsqueeze(1)
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, -float("inf"))
    return torch.empty_like(logits).scatter_(1, sorted_idx, sorted_logits)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask tokens whose probability is below min_p times the row's top probability. min_p: (B,)."""
    probs = logits.softmax(dim=-1)
    threshold = min_p.unsqueeze(1) * probs.amax(dim=-1, keepdim=True)  # (B, 1)
    return logits.masked_fill(probs < threshold, -float("inf"))


def _logprob_dict(logprobs: torch.Tensor, token: int, k: int) -> Logprobs:
    """{token: (logprob, rank)} for the chosen token and the k most likely ones, from a (V,) row."""
    V = logprobs.shape[0]
    k = V if k == -1 else min(k, V)
    chosen = logprobs[token]
    result: Logprobs = {}
    if k > 0:
        values, ids = logprobs.topk(k)
        for rank, (tid, lp) in enumerate(zip(ids.tolist(), values.tolist()), start=1):
            result[tid] = (lp, rank)
    rank = int((logprobs >= chosen).sum().item())
    result[token] = (float(chosen.item()), rank)
    return result


class Sampler:
    """Samples one token per row of a (B, V) logits batch; see the module docstring for the rules."""

    def __init__(self, seed: int | None = None, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        if self.generator.device != device:
            # Logits arrived on another device than the one given at construction: restart the
            # shared stream there from the same seed (seeded rows keep their own generators).
            seed = self.generator.initial_seed()
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)
            self.device = device
        return self.generator

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, states: list[SamplingState]) -> SamplerOutput:
        """One token per row; logits (B, V) are not modified."""
        if logits.dim() != 2 or logits.shape[0] != len(states):
            raise ValueError(f"logits must be (B, V) with B = {len(states)} states, got {tuple(logits.shape)}")
        raw = logits.float()
        tokens = self.sample_tokens(raw, states).tolist()
        logprobs: list[Logprobs | None] = [None] * len(states)
        params = [s.params for s in states]
        want = [i for i, p in enumerate(params) if p.logprobs is not None]
        if want:
            lp = torch.log_softmax(raw[want], dim=-1)  # (W, V), raw logits: vLLM's default
            for j, i in enumerate(want):
                logprobs[i] = _logprob_dict(lp[j], tokens[i], params[i].logprobs)
        return SamplerOutput(token_ids=tokens, logprobs=logprobs)

    @staticmethod
    def overlappable(state: SamplingState) -> bool:
        """Whether sample_tokens can draw this row's next token before the previous one is known: no penalties
        (they count the output tokens) and no logprobs (sample() computes them after reading the token back)."""
        return state.params.logprobs is None and not _penalised([state])

    @torch.inference_mode()
    def sample_tokens(
        self, logits: torch.Tensor, states: list[SamplingState], pending: int = 0, owned: bool = False
    ) -> torch.Tensor:
        """(B,) long token ids on the logits' device, without waiting for the device.

        `pending` tokens per row are sampled but not yet in output_token_ids (min_tokens counts them). With `owned`
        the caller gives the logits away (masks may be written into them).
        """
        device = logits.device
        greedy = [s.params.is_greedy for s in states]
        # An all-greedy batch takes the argmax in the logits' own dtype (exact: widening to float32 keeps the order).
        x = logits if all(greedy) and not _penalised(states) else logits.float()
        x = apply_min_tokens(apply_penalties(x, states), states, pending, inplace=owned or x is not logits)
        if not any(greedy):
            return self._sample_random(x, states)
        token_ids = get_op("argmax", device)(x)  # Triton on CUDA: torch's is one block per row
        if not all(greedy):
            random_rows = [i for i, g in enumerate(greedy) if not g]
            rows = host_to_device(random_rows, device)
            token_ids[rows] = self._sample_random(x[rows], [states[i] for i in random_rows])  # (R,)
        return token_ids

    def filtered_probs(self, logits: torch.Tensor, states: list[SamplingState]) -> torch.Tensor:
        """(R, V) probabilities that non-greedy rows are sampled from: temperature, top-k, top-p, min-p.

        `logits` are already penalised and masked; exposed so tests can compare the distribution.
        Greedy rows (which `sample` takes by argmax instead) come back at temperature 1.
        """
        device = logits.device
        params = [s.params for s in states]
        # Greedy rows never sample; give them temperature 1 so the result stays finite.
        temperature = host_to_device([1.0 if p.is_greedy else p.temperature for p in params], device, logits.dtype)
        x = logits / temperature.unsqueeze(1)
        V = x.shape[1]
        top_k = top_p = None
        if any(p.top_k > 0 for p in params):
            top_k = host_to_device([p.top_k if p.top_k > 0 else V for p in params], device)
        if any(p.top_p < 1.0 for p in params):
            top_p = host_to_device([p.top_p for p in params], device, logits.dtype)
        if top_k is not None or top_p is not None:
            x = apply_top_k_top_p(x, top_k, top_p)
        if any(p.min_p > 0.0 for p in params):
            x = apply_min_p(x, host_to_device([p.min_p for p in params], device, logits.dtype))
        return x.softmax(dim=-1)

    def _sample_random(self, logits: torch.Tensor, states: list[SamplingState]) -> torch.Tensor:
        """Exponential race: argmax(probs / q) with q ~ Exp(1) samples exactly from probs. Returns (R,)."""
        probs = self.filtered_probs(logits, states)  # (R, V)
        device = probs.device
        q = torch.empty_like(probs)
        shared_rows = []
        for i, s in enumerate(states):
            gen = s.generator_for(device)
            if gen is None:
                shared_rows.append(i)
            else:
                q[i].exponential_(generator=gen)
        if shared_rows:
            if len(shared_rows) == len(states):
                q.exponential_(generator=self._shared_generator(device))
            else:
                noise = torch.empty(len(shared_rows), probs.shape[1], dtype=probs.dtype, device=device)
                noise.exponential_(generator=self._shared_generator(device))
                q[host_to_device(shared_rows, device)] = noise
        q.clamp_(min=torch.finfo(q.dtype).tiny)  # Exp(1) can round to 0: avoid 0/0
        return (probs / q).argmax(dim=-1)

    @torch.inference_mode()
    def prompt_logprobs(self, logits: torch.Tensor, prompt_token_ids: list[int], k: int) -> list[Logprobs | None]:
        """Logprobs of each prompt token given the ones before it, plus the top-k at each position.

        logits: (L, V) from the prefill, row j predicting token j + 1; L is len(prompt) or
        len(prompt) - 1 (a last row is ignored). Raw log-softmax, as for sampled tokens.
        Returns one entry per prompt token; the first is None (nothing predicts it).
        """
        n = len(prompt_token_ids)
        if n == 0:
            return []
        if logits.dim() != 2 or logits.shape[0] < n - 1:
            raise ValueError(f"prompt logits must be (>= {n - 1}, V), got {tuple(logits.shape)}")
        result: list[Logprobs | None] = [None]
        if n == 1:
            return result
        lp = torch.log_softmax(logits[: n - 1].float(), dim=-1)  # (n - 1, V)
        for j in range(n - 1):
            result.append(_logprob_dict(lp[j], prompt_token_ids[j + 1], k))
        return result
