"""One optimizer step over a mini-batch, and the actor's and critic's losses for it.

Losses divide by counts of the whole mini-batch across DP ranks (Denominators), and the value handed to the schedule
is multiplied by (micro-batches x DP size): the schedule divides by the micro-batch count and DDP averages over DP,
so the accumulated gradient is exactly that of the mini-batch loss. For the same reason each micro-batch's metrics
are its share of the mini-batch's, and the step sums them over micro-batches and DP ranks (`*_max` keys: maximum).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from rlpost.algorithms import Denominators, PolicyLossSettings, ValueLossSettings, actor_loss, value_loss
from rlpost.algorithms.aggregation import token_share
from rlpost.megatron.forward import MicroBatch, OnOutput, logprobs_fn, run_schedule
from rlpost.megatron.model import StageModel


def _all_reduce(values: list[float], group, op=dist.ReduceOp.SUM) -> list[float]:
    """values reduced over the group (as they are without one): on the device its backend takes (NCCL: CUDA)."""
    if not values or group is None or dist.get_world_size(group) == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op, group=group)
    return tensor.tolist()


def loss_denominators(micro_batches: list[MicroBatch], loss_scale_factor: float, dp_group=None) -> Denominators:
    """The whole mini-batch's counts: each micro-batch's own, summed over them and the data-parallel group. The
    Dr. GRPO constant is required here: defaulting it to a micro-batch's width is the bias it exists to remove."""
    local = [Denominators.of(mb["loss_mask"]) for mb in micro_batches]
    tokens, seqs, rows = _all_reduce([sum(d.tokens for d in local), sum(d.seqs for d in local),
                                      sum(d.rows for d in local)], dp_group)
    return Denominators(tokens=tokens, seqs=seqs, rows=rows, loss_scale_factor=float(loss_scale_factor))


def actor_loss_fn(stage: StageModel, settings: PolicyLossSettings, *, n_micro_batches: int, dp: int,
                  denominators: Denominators, temperature: float = 1.0, on_policy: bool = False) -> OnOutput:
    """micro-batch keys: input_ids [b, s], loss_mask / advantages (/ old_log_probs / ref_log_probs /
    rollout_log_probs) [b, s-1]. The LM head runs on loss_mask positions only (response tokens).

    on_policy: this is the batch's only optimizer step, so the old log-probs are this forward's own, detached; the
    entropy and the rollout-vs-train difference that the skipped old-log-prob pass would have reported come from
    here."""
    logprobs = logprobs_fn(stage, temperature, with_entropy=settings.entropy_coeff > 0 or on_policy, masked=True)

    def fn(output, mb):
        lp, ent = logprobs(output, mb)
        old = lp.detach() if on_policy else mb["old_log_probs"]
        loss, metrics = actor_loss(lp, old, mb["advantages"], mb["loss_mask"], settings, denominators, entropy=ent,
                                   ref_log_prob=mb["ref_log_probs"] if settings.use_kl_loss else None)
        if on_policy:
            diff = (mb["rollout_log_probs"] - old).abs()
            metrics["rollout_logprob_diff_mean"] = token_share(diff, mb["loss_mask"], denominators)
            metrics["rollout_logprob_diff_max"] = (diff * mb["loss_mask"]).max()
        return loss * n_micro_batches * dp, metrics

    return OnOutput(fn, logprobs.hidden_states)


def critic_loss_fn(settings: ValueLossSettings, *, n_micro_batches: int, dp: int, denominators: Denominators
                   ) -> Callable:
    """micro-batch keys: input_ids [b, s], loss_mask / old_values / returns [b, s-1]."""

    def fn(output, mb):
        values = output[:, :-1, 0].float()
        loss, metrics = value_loss(values, mb["old_values"], mb["returns"], mb["loss_mask"], settings, denominators)
        return loss * n_micro_batches * dp, metrics

    return fn


def sum_shares(per_micro_batch: list[dict], dp_group=None) -> dict:
    """The mini-batch's metrics from its micro-batches' shares, summed (`*_max`: maximum) over micro-batches and the
    data-parallel group. Every member of a DP group is the same pipeline stage, so all have the same keys."""
    keys = sorted({k for m in per_micro_batch for k in m})
    summed = [k for k in keys if not k.endswith("_max")]
    largest = [k for k in keys if k.endswith("_max")]
    sums = _all_reduce([sum(float(m[k]) for m in per_micro_batch) for k in summed], dp_group)
    maxima = _all_reduce([max(float(m[k]) for m in per_micro_batch) for k in largest], dp_group, dist.ReduceOp.MAX)
    return dict(zip(summed, sums)) | dict(zip(largest, maxima))


def train_step(stage: StageModel, optimizer, scheduler, micro_batches: list[MicroBatch], loss_fn: Callable,
               dp_group=None) -> dict:
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
    return metrics | sum_shares(per_micro_batch, dp_group)
