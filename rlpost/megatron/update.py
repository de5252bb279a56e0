"""One optimizer step over a mini-batch, and the actor's PPO loss for it.

Losses use global denominators (tokens / sequences of the whole mini-batch across DP ranks), and the value handed
to the schedule is multiplied by (micro-batches x DP size): the schedule divides by the micro-batch count and
DDP averages over DP, so the accumulated gradient is exactly that of the mini-batch loss.
"""

from __future__ import annotations

from typing import Callable

import torch

from rlpost.algorithms import actor_loss, value_loss
from rlpost.config.schema import ActorConfig, CriticConfig
from rlpost.megatron.forward import MicroBatch, OnOutput, logprobs_fn, run_schedule
from rlpost.megatron.model import StageModel
from rlpost.metrics import reduce_dicts


def loss_denominators(micro_batches: list[MicroBatch], dp_group=None, horizon: int | None = None) -> dict:
    """Token and sequence counts of the whole mini-batch, summed over the data-parallel group."""
    counts = torch.tensor([sum(float(mb["loss_mask"].sum()) for mb in micro_batches),
                           float(sum(mb["loss_mask"].shape[0] for mb in micro_batches))], dtype=torch.float64)
    if dp_group is not None and torch.distributed.get_world_size(dp_group) > 1:
        torch.distributed.all_reduce(counts, group=dp_group)
    out = {"n_tokens": counts[0].item(), "n_seqs": counts[1].item()}
    return out | ({"horizon": horizon} if horizon is not None else {})


def actor_loss_fn(stage: StageModel, cfg: ActorConfig, n_micro_batches: int, dp: int, denominators: dict,
                  temperature: float = 1.0, on_policy: bool = False) -> OnOutput:
    """micro-batch keys: input_ids [b, s], loss_mask / advantages (/ old_log_probs / ref_log_probs /
    rollout_log_probs) [b, s-1]. The LM head runs on loss_mask positions only (response tokens).

    on_policy: this is the batch's only optimizer step, so the old log-probs are this forward's own, detached; the
    entropy and the rollout-vs-train difference that the skipped old-log-prob pass would have reported come from
    here."""
    logprobs = logprobs_fn(stage, temperature, with_entropy=cfg.entropy_coeff > 0 or on_policy, masked=True)

    def fn(output, mb):
        lp, ent = logprobs(output, mb)
        old = lp.detach() if on_policy else mb["old_log_probs"]
        loss, metrics = actor_loss(
            lp, old, mb["advantages"], mb["loss_mask"], policy_loss=cfg.policy_loss,
            loss_agg_mode=cfg.loss_agg_mode, clip_ratio_low=cfg.clip_ratio_low, clip_ratio_high=cfg.clip_ratio_high,
            clip_ratio_c=cfg.clip_ratio_c, entropy=ent, entropy_coeff=cfg.entropy_coeff,
            ref_log_prob=mb["ref_log_probs"] if cfg.use_kl_loss else None, kl_loss_coef=cfg.kl_loss_coef,
            kl_loss_type=cfg.kl_loss_type, **denominators,
        )
        if on_policy:
            diff = (mb["rollout_log_probs"] - old).abs() * mb["loss_mask"]
            metrics["rollout_logprob_diff_mean"] = diff.sum() / mb["loss_mask"].sum().clamp(min=1)
            metrics["rollout_logprob_diff_max"] = diff.max()
        return loss * n_micro_batches * dp, metrics

    return OnOutput(fn, logprobs.hidden_states)


def critic_loss_fn(cfg: CriticConfig, n_micro_batches: int, dp: int, denominators: dict) -> Callable:
    """micro-batch keys: input_ids [b, s], loss_mask / old_values / returns [b, s-1]."""

    def fn(output, mb):
        values = output[:, :-1, 0].float()
        loss, metrics = value_loss(values, mb["old_values"], mb["returns"], mb["loss_mask"],
                                   cliprange_value=cfg.cliprange_value, loss_agg_mode=cfg.loss_agg_mode, **denominators)
        return loss * n_micro_batches * dp, metrics | {"vf_loss": loss.detach()}

    return fn


def train_step(stage: StageModel, optimizer, scheduler, micro_batches: list[MicroBatch], loss_fn: Callable) -> dict:
    """Forward+backward over the micro-batches (through the pipeline), then one optimizer step."""
    stage.module.train()
    stage.module.zero_grad_buffer()
    optimizer.zero_grad()
    per_micro_batch = run_schedule(stage, micro_batches, loss_fn, forward_only=False)
    updated, grad_norm, _ = optimizer.step()
    if updated:
        scheduler.step(increment=1)
    metrics = {"grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
               "lr": optimizer.param_groups[0]["lr"], "update_skipped": not updated}
    return metrics | reduce_dicts(per_micro_batch)
