"""Policy and value losses. Each returns (scalar loss, metrics); a metric is the tensor's share of the mini-batch's
value (see aggregation), so summing over micro-batches and data-parallel ranks reports the mini-batch's own value."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlpost.algorithms.aggregation import Denominators, agg_loss, token_share
from rlpost.algorithms.kl import kl_penalty
from rlpost.algorithms.masked import masked_mean
from rlpost.registry import Registry


@dataclass(frozen=True)
class PolicyLossFacts:
    loss_agg_mode: str | None = None  # the aggregation the method is defined with (None: any)


POLICY_LOSSES: Registry = Registry("policy loss", PolicyLossFacts)


@dataclass(frozen=True, kw_only=True)
class PolicyLossSettings:
    """Everything the actor's loss reads, built from the config in one place (rlpost.config.derived); no defaults
    here, so none can drift from configs/."""

    policy_loss: str
    loss_agg_mode: str
    clip_ratio_low: float
    clip_ratio_high: float
    clip_ratio_c: float
    entropy_coeff: float
    use_kl_loss: bool
    kl_loss_coef: float
    kl_loss_type: str
    loss_scale_factor: float | None  # seq-mean-token-sum-norm's constant (None: the tensor's width)


@dataclass(frozen=True, kw_only=True)
class ValueLossSettings:
    cliprange_value: float
    loss_agg_mode: str
    loss_scale_factor: float | None


def _clipped(ratio: torch.Tensor, advantages: torch.Tensor, s: PolicyLossSettings):
    """PPO's pessimistic objective with separate low/high ranges (DAPO clip-higher): the loss matrix, and where
    clipping decided it."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - s.clip_ratio_low, 1 + s.clip_ratio_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


@POLICY_LOSSES.register("vanilla")
def vanilla_ppo(log_prob, old_log_prob, advantages, mask, s: PolicyLossSettings, d: Denominators):
    """PPO clip plus dual clip: for negative advantages the loss is bounded by -A * clip_ratio_c, so a token whose
    ratio exploded cannot dominate the update."""
    log_ratio = (log_prob - old_log_prob).clamp(-20.0, 20.0)
    ppo, was_clipped = _clipped(log_ratio.exp(), advantages, s)
    bound = -advantages * s.clip_ratio_c
    lower = (ppo > bound) & (advantages < 0)
    loss_mat = torch.where(advantages < 0, torch.minimum(ppo, bound), ppo)
    metrics = {"pg_clipfrac": token_share(was_clipped, mask, d), "pg_clipfrac_lower": token_share(lower, mask, d),
               "ppo_kl": token_share(-log_ratio, mask, d)}
    return agg_loss(loss_mat, mask, s.loss_agg_mode, d), metrics


@POLICY_LOSSES.register("gspo", loss_agg_mode="seq-mean-token-mean")
def gspo(log_prob, old_log_prob, advantages, mask, s: PolicyLossSettings, d: Denominators):
    """GSPO: one importance ratio per sequence (geometric mean of token ratios), clipped per sequence.

    The token-level form s_i * pi_t / sg(pi_t) keeps the value of the sequence ratio while routing its gradient
    through each token. The paper's clip ranges are tiny (3e-4 / 4e-4); it averages per sequence whatever
    loss_agg_mode says, as verl does (rlpost's config check also refuses another mode, which would apply to the
    entropy and KL terms only).
    """
    log_ratio = log_prob - old_log_prob
    seq_log_ratio = masked_mean(log_ratio, mask.to(log_prob.dtype), dim=-1)
    token_log_ratio = (log_prob - log_prob.detach() + seq_log_ratio.detach().unsqueeze(-1)).clamp(max=10.0)
    loss_mat, was_clipped = _clipped(token_log_ratio.exp(), advantages, s)
    metrics = {"pg_clipfrac": token_share(was_clipped, mask, d), "ppo_kl": token_share(-log_ratio, mask, d)}
    return agg_loss(loss_mat, mask, POLICY_LOSSES.facts("gspo").loss_agg_mode, d), metrics


def actor_loss(log_prob, old_log_prob, advantages, mask, s: PolicyLossSettings, d: Denominators | None = None, *,
               entropy=None, ref_log_prob=None):
    """Policy loss - entropy_coeff * entropy + kl_loss_coef * KL(pi || ref), all aggregated the same way. Without
    denominators the tensors are the whole mini-batch."""
    d = d or Denominators.of(mask, s.loss_scale_factor)
    loss, metrics = POLICY_LOSSES.get(s.policy_loss)(log_prob, old_log_prob, advantages, mask, s, d)
    metrics["pg_loss"] = loss.detach()
    if entropy is not None:
        ent = agg_loss(entropy, mask, s.loss_agg_mode, d)
        metrics["entropy"] = ent.detach()
        if s.entropy_coeff:
            loss = loss - s.entropy_coeff * ent
    if s.use_kl_loss:
        kl = agg_loss(kl_penalty(log_prob, ref_log_prob, s.kl_loss_type), mask, s.loss_agg_mode, d)
        metrics["kl_loss"] = kl.detach()
        loss = loss + s.kl_loss_coef * kl
    return loss, metrics


def value_loss(values, old_values, returns, mask, s: ValueLossSettings, d: Denominators | None = None):
    """Clipped value loss: 0.5 * max((v - R)^2, (v_clipped - R)^2), v_clipped within +-cliprange of the old value.
    v_clipped is v itself inside the range (not old + (v - old), which rounds), so vf_clipfrac counts only tokens
    the clip really changed instead of rounding noise."""
    d = d or Denominators.of(mask, s.loss_scale_factor)
    v_clipped = values.clamp(old_values - s.cliprange_value, old_values + s.cliprange_value)
    unclipped = (values - returns).square()
    clipped = (v_clipped - returns).square()
    loss = 0.5 * agg_loss(torch.maximum(unclipped, clipped), mask, s.loss_agg_mode, d)
    return loss, {"vf_loss": loss.detach(), "vf_clipfrac": token_share(clipped > unclipped, mask, d)}
