"""Batched next-token choice with per-row sampling settings.

Reported log-probs are those of the temperature-scaled distribution before top-k/top-p/min-p truncation, as
SGLang reports them: the distribution the trainer recomputes from its own logits (penalties and tokens banned
before min_new_tokens also shape it; the trainer does not see those).
A seeded row draws its uniform number from a hash of (seed, position), as SGLang's deterministic sampler hashes its
seed with the position: its tokens depend neither on what else is in the batch nor on earlier requests with the
same seed (the turns of one conversation share a seed but sample at new positions).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import torch


@dataclass
class RowSettings:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    position: int = 0  # of the token being sampled, in the whole sequence
    banned: tuple[int, ...] = ()  # token ids masked out (stop ids before min_new_tokens)

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-6  # SGLang's greedy threshold; top_k=1 keeps its temperature's log-probs

    @property
    def truncates(self) -> bool:
        return self.top_p < 1.0 or self.top_k >= 1 or self.min_p > 0.0

    @property
    def penalised(self) -> bool:
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0 or self.repetition_penalty != 1.0


def apply_penalties(logits: torch.Tensor, row: int, settings: RowSettings, seen: torch.Tensor,
                    generated: torch.Tensor) -> None:
    """OpenAI frequency/presence penalties over generated tokens; repetition penalty (CTRL) over prompt and output."""
    if generated.numel() and (settings.frequency_penalty or settings.presence_penalty):
        counts = torch.bincount(generated, minlength=logits.shape[1])[: logits.shape[1]].float()
        logits[row] -= settings.frequency_penalty * counts + settings.presence_penalty * (counts > 0).float()
    if settings.repetition_penalty != 1.0 and seen.numel():
        values = logits[row, seen]
        logits[row, seen] = torch.where(values > 0, values / settings.repetition_penalty,
                                        values * settings.repetition_penalty)


def sample(logits: torch.Tensor, rows: list[RowSettings], generator: torch.Generator,
           top_logprobs: int = 0) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """logits [n, vocab] (float32, penalties applied; modified in place) -> (tokens [n], their log-probs [n],
    optional top-k (log-probs, ids) [n, top_logprobs]).

    Written for a [64, 150k] batch on CPU, where every full-width pass costs milliseconds.
    """
    n = logits.shape[0]
    for i, s in enumerate(rows):
        if s.banned:
            logits[i, list(s.banned)] = float("-inf")
    temperatures = [1.0 if s.greedy else s.temperature for s in rows]
    if any(t != 1.0 for t in temperatures):
        logits.div_(torch.tensor(temperatures, dtype=logits.dtype)[:, None])
    # one pass of exp + cumsum gives both the partition function (the last column) and the sampling CDF
    peak = logits.amax(dim=-1, keepdim=True)
    cdf = (logits - peak).exp_().cumsum_(dim=-1)
    lse = peak.squeeze(1) + cdf[:, -1].log()
    tokens = torch.empty(n, dtype=torch.long)
    greedy = [i for i, s in enumerate(rows) if s.greedy]
    if greedy:
        tokens[greedy] = logits[greedy].argmax(dim=-1)
    sampled = [i for i, s in enumerate(rows) if not s.greedy]
    if sampled:
        # inverse-CDF sampling: one uniform number per row (filling a [64, 150k] noise tensor with mt19937 costs
        # tens of milliseconds on CPU). float32 accumulation moves a token's probability by about 1e-7 at most.
        for i in sampled:
            if rows[i].truncates:
                cdf[i] = _truncate(logits[i] - lse[i], rows[i]).exp_().cumsum_(dim=0)
        if len(sampled) < n:
            cdf = cdf[sampled]
        uniform = torch.empty(len(sampled))
        shared = [j for j, i in enumerate(sampled) if rows[i].seed is None]
        if shared:
            uniform[shared] = torch.rand(len(shared), generator=generator)
        for j, i in enumerate(sampled):
            if rows[i].seed is not None:
                uniform[j] = seeded_uniform(rows[i].seed, rows[i].position)
        targets = (uniform * cdf[:, -1])[:, None]
        tokens[sampled] = torch.searchsorted(cdf, targets, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)
    chosen = logits.gather(1, tokens[:, None]).squeeze(1) - lse
    top = None
    if top_logprobs:
        values, ids = logits.topk(top_logprobs, dim=-1)
        top = (values - lse[:, None], ids)
    return tokens, chosen, top


def seeded_uniform(seed: int, position: int) -> float:
    """A number in [0, 1) fixed by (seed, position)."""
    digest = hashlib.blake2b(struct.pack("<qq", seed, position), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


def _truncate(logprobs: torch.Tensor, s: RowSettings) -> torch.Tensor:
    """One row's log-probs with the tokens outside top-k / top-p / min-p set to -inf."""
    sorted_logprobs, order = logprobs.sort(descending=True)
    sorted_probs = sorted_logprobs.exp()
    drop = torch.zeros_like(sorted_probs, dtype=torch.bool)
    if s.top_k >= 1:
        drop[s.top_k:] = True
    if s.top_p < 1.0:
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop |= (sorted_probs.cumsum(0) - sorted_probs) > s.top_p
    if s.min_p > 0.0:
        drop |= sorted_probs < s.min_p * sorted_probs[0]
    return torch.full_like(logprobs, float("-inf")).scatter_(0, order, sorted_logprobs.masked_fill(drop, float("-inf")))
