"""Policy and value losses. Each returns (scalar loss, metrics of detached floats-as-tensors)."""

from __future__ import annotations

import torch

from rlpost.algorithms.aggregation import agg_loss
from rlpost.algorithms.kl import kl_penalty
from rlpost.algorithms.masked import masked_mean
from rlpost.registry import Registry

POLICY_LOSSES: Registry = Registry("policy loss")


@POLICY_LOSSES.register("vanilla")
def vanilla_ppo(
    log_prob, old_log_prob, advantages, response_mask, *, clip_ratio_low: float, clip_ratio_high: float,
    clip_ratio_c: float, loss_agg_mode: str, **denominators,
):
    """PPO clip with separate low/high ranges (DAPO clip-higher) and dual clip: for negative advantages the loss
    is bounded by -A * clip_ratio_c, so a token whose ratio exploded cannot dominate the update."""
    mask = response_mask.to(log_prob.dtype)
    log_ratio = (log_prob - old_log_prob).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_ratio_low, 1 + clip_ratio_high)
    ppo = torch.maximum(unclipped, clipped)
    bound = -advantages * clip_ratio_c
    dual = torch.minimum(ppo, bound)
    loss_mat = torch.where(advantages < 0, dual, ppo)
    metrics = {
        "pg_clipfrac": masked_mean((clipped > unclipped).to(mask.dtype), mask).detach(),
        "pg_clipfrac_lower": masked_mean(((ppo > bound) & (advantages < 0)).to(mask.dtype), mask).detach(),
        "ppo_kl": masked_mean(-log_ratio, mask).detach(),
    }
    return agg_loss(loss_mat, mask, loss_agg_mode, **denominators), metrics


@POLICY_LOSSES.register("gspo")
def gspo(
    log_prob, old_log_prob, advantages, response_mask, *, clip_ratio_low: float, clip_ratio_high: float,
    loss_agg_mode: str, **denominators,
):
    """GSPO: one importance ratio per sequence (geometric mean of token ratios), clipped per sequence.

    The token-level form s_i * pi_t / sg(pi_t) keeps the value of the sequence ratio while routing its gradient
    through each token. GSPO's paper uses tiny clip ranges (3e-4 / 4e-4) and seq-mean-token-mean aggregation.
    """
    mask = response_mask.to(log_prob.dtype)
    log_ratio = log_prob - old_log_prob
    seq_log_ratio = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    token_log_ratio = (log_prob - log_prob.detach() + seq_log_ratio.detach().unsqueeze(-1)).clamp(max=10.0)
    ratio = token_log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_ratio_low, 1 + clip_ratio_high)
    loss_mat = torch.maximum(unclipped, clipped)
    metrics = {
        "pg_clipfrac": masked_mean((clipped > unclipped).to(mask.dtype), mask).detach(),
        "ppo_kl": masked_mean(-log_ratio, mask).detach(),
    }
    return agg_loss(loss_mat, mask, loss_agg_mode, **denominators), metrics


def actor_loss(
    log_prob, old_log_prob, advantages, response_mask, *, policy_loss: str, loss_agg_mode: str,
    clip_ratio_low: float, clip_ratio_high: float, clip_ratio_c: float, entropy=None, entropy_coeff: float = 0.0,
    ref_log_prob=None, kl_loss_coef: float = 0.0, kl_loss_type: str = "low_var_kl", **denominators,
):
    """Policy loss - entropy_coeff * entropy + kl_loss_coef * KL(pi || ref), all aggregated the same way."""
    loss, metrics = POLICY_LOSSES.get(policy_loss)(
        log_prob, old_log_prob, advantages, response_mask, clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c, loss_agg_mode=loss_agg_mode, **denominators,
    )
    metrics["pg_loss"] = loss.detach()
    if entropy is not None:
        ent = agg_loss(entropy, response_mask, loss_agg_mode, **denominators)
        metrics["entropy"] = ent.detach()
        if entropy_coeff:
            loss = loss - entropy_coeff * ent
    if ref_log_prob is not None:
        kl = agg_loss(kl_penalty(log_prob, ref_log_prob, kl_loss_type), response_mask, loss_agg_mode, **denominators)
        metrics["kl_loss"] = kl.detach()
        loss = loss + kl_loss_coef * kl
    return loss, metrics


def value_loss(values, old_values, returns, response_mask, *, cliprange_value: float, loss_agg_mode: str, **denominators):
    """Clipped value loss: 0.5 * max((v - R)^2, (v_clipped - R)^2), v_clipped within +-cliprange of the old value."""
    mask = response_mask.to(values.dtype)
    v_clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped = (values - returns).square()
    clipped = (v_clipped - returns).square()
    loss = 0.5 * agg_loss(torch.maximum(unclipped, clipped), mask, loss_agg_mode, **denominators)
    return loss, {"vf_clipfrac": masked_mean((clipped > unclipped).to(mask.dtype), mask).detach()}
