"""Loss aggregation modes: how a [batch, time] loss matrix becomes one scalar.

Each mode takes optional global denominators so that gradient accumulation over micro-batches (or data-parallel
ranks) sums to exactly the loss of the whole mini-batch instead of a mean of per-micro-batch means.
"""

from __future__ import annotations

import torch

from rlpost.registry import Registry

LOSS_AGG_MODES: Registry = Registry("loss aggregation mode")


@LOSS_AGG_MODES.register("token-mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, n_tokens: float | None = None, **_) -> torch.Tensor:
    """Every token weighs the same, so long responses dominate (PPO/DAPO default)."""
    denom = mask.sum().clamp(min=1) if n_tokens is None else n_tokens
    return (loss * mask).sum() / denom


@LOSS_AGG_MODES.register("seq-mean-token-sum")
def seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, n_seqs: float | None = None, **_) -> torch.Tensor:
    denom = loss.shape[0] if n_seqs is None else n_seqs
    return (loss * mask).sum() / denom


@LOSS_AGG_MODES.register("seq-mean-token-mean")
def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, n_seqs: float | None = None, **_) -> torch.Tensor:
    """Every sequence weighs the same (original GRPO)."""
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    denom = loss.shape[0] if n_seqs is None else n_seqs
    return per_seq.sum() / denom


@LOSS_AGG_MODES.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    loss: torch.Tensor, mask: torch.Tensor, n_seqs: float | None = None, horizon: int | None = None, **_
) -> torch.Tensor:
    """Dr. GRPO: token sums divided by a constant horizon, so no length bias enters through the normaliser.

    The horizon should be the configured maximum response length; it defaults to the padded width.
    """
    denom = (loss.shape[0] if n_seqs is None else n_seqs) * (loss.shape[-1] if horizon is None else horizon)
    return (loss * mask).sum() / denom


def agg_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str, **denominators) -> torch.Tensor:
    return LOSS_AGG_MODES.get(mode)(loss, mask.to(loss.dtype), **denominators)
