"""Loss aggregation modes: how a [batch, time] loss matrix becomes one scalar, with verl's semantics (its
core_algos.agg_loss as its actors call it: seq-mean-token-sum/-mean count the rows that have loss tokens, Dr. GRPO's
mode every row; verl's newer engine path counts every row in all three).

A mode divides by counts of the whole mini-batch (Denominators), so a micro-batch's value is its exact share of the
mini-batch loss: shares summed over micro-batches and data-parallel ranks give the mini-batch loss, and accumulated
gradients give its gradient, however the mini-batch is cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlpost.algorithms.masked import masked_mean
from rlpost.registry import Registry

LOSS_AGG_MODES: Registry = Registry("loss aggregation mode")


@dataclass(frozen=True)
class Denominators:
    tokens: float  # loss tokens
    seqs: float  # rows with at least one loss token: seq-mean-token-sum/-mean leave empty rows out
    rows: float  # every row: Dr. GRPO's 1/G (verl's actor scales by rows / ppo_mini_batch_size)
    loss_scale_factor: float  # Dr. GRPO's constant per-sequence normaliser (rlpost sets data.max_response_length)

    @classmethod
    def of(cls, mask: torch.Tensor, loss_scale_factor: float | None = None) -> Denominators:
        """One tensor's own counts; loss_scale_factor defaults to its width (verl's default when unset)."""
        return cls(tokens=float(mask.sum()), seqs=float((mask.sum(-1) > 0).sum()), rows=float(mask.shape[0]),
                   loss_scale_factor=float(loss_scale_factor or mask.shape[-1]))


def _divide(total: torch.Tensor, count: float) -> torch.Tensor:
    return total / count if count else total * 0.0  # nothing to average: 0, still attached to the graph


@LOSS_AGG_MODES.register("token-mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, d: Denominators) -> torch.Tensor:
    """Every token weighs the same, so long responses dominate (PPO/DAPO default)."""
    return _divide((loss * mask).sum(), d.tokens)


@LOSS_AGG_MODES.register("seq-mean-token-sum")
def seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, d: Denominators) -> torch.Tensor:
    return _divide((loss * mask).sum(), d.seqs)


@LOSS_AGG_MODES.register("seq-mean-token-mean")
def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, d: Denominators) -> torch.Tensor:
    """Every sequence weighs the same (original GRPO)."""
    return _divide(masked_mean(loss, mask, dim=-1).sum(), d.seqs)


@LOSS_AGG_MODES.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss: torch.Tensor, mask: torch.Tensor, d: Denominators) -> torch.Tensor:
    """Dr. GRPO: token sums over a constant, so no length bias enters through the normaliser. The constant must not
    depend on the batch (a micro-batch's padded width would bring the bias back)."""
    return _divide((loss * mask).sum(), d.rows * d.loss_scale_factor)


def agg_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str, denominators: Denominators | None = None
             ) -> torch.Tensor:
    """Without denominators, the tensor is its own mini-batch."""
    mask = mask.to(loss.dtype)
    return LOSS_AGG_MODES.get(mode)(loss, mask, denominators or Denominators.of(mask))


def token_share(x: torch.Tensor, mask: torch.Tensor, denominators: Denominators | None = None) -> torch.Tensor:
    """A token-mean statistic (clip fraction, KL) as this tensor's share of the mini-batch's, detached."""
    return agg_loss(x.detach().to(torch.float32), mask, "token-mean", denominators)
