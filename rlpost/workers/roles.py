"""The megatron roles a training worker hosts: policy (trainable actor or frozen reference) and critic.

Each works on the worker's data-parallel piece of a Batch holding full sequences: `input_ids` [n, s] right-padded,
`lengths` [n], and per-position tensors [n, s-1] aligned with the predicted token (`loss_mask` = tokens the policy
generated). Per-sample answers exist on the last pipeline stage only; other ranks return None. Update metrics are
the mini-batch's own values (the same on every DP rank), averaged over mini-batches and epochs.
"""

from __future__ import annotations

import torch

from rlpost.algorithms import PolicyLossSettings, ValueLossSettings
from rlpost.batch import Batch
from rlpost.config.schema import ActorConfig, CriticConfig
from rlpost.megatron.forward import compute_logprobs, compute_values
from rlpost.megatron.micro_batches import attach_images, make_micro_batches, restore
from rlpost.megatron.model import StageModel, build_stage
from rlpost.megatron.optim import build_optimizer, wrap_ddp
from rlpost.megatron.update import actor_loss_fn, critic_loss_fn, loss_denominators, train_step
from rlpost.metric_dicts import average
from rlpost.models.mrope import batch_mrope_positions
from rlpost.models.vision import vision_parameters


def micro_batches(stage: StageModel, batch: Batch, keys: list[str], micro_batch_size: int, max_tokens: int | None):
    """A vision-language batch also carries per-sample `multi_modal_inputs` ({pixel_values, image_grid_thw}, empty
    for a text-only sample): its image slots and mRoPE positions are computed here, and each micro-batch gets its
    samples' images. Image tokens are part of every length, so token budgets count them."""
    tensors = {k: batch[k] for k in ["input_ids", *keys]}
    lengths = batch["lengths"].tolist()
    images = batch["multi_modal_inputs"] if "multi_modal_inputs" in batch else None
    if images is not None:
        if stage.dims.vision is None:
            raise ValueError("the batch has images but the model is text-only")
        ids, token = batch["input_ids"], stage.hf_config.image_token_id
        # an <|image_pad|> the policy sampled is text: only tokens it did not generate hold images
        generated = torch.nn.functional.pad(batch["loss_mask"].bool(), (1, 0))
        tensors["image_mask"] = (ids == token) & ~generated
        grids = [m.get("image_grid_thw") if m else None for m in images]
        tensors["position_ids"] = batch_mrope_positions(ids, lengths, grids, token, stage.dims.vision.merge,
                                                        tensors["image_mask"])
    mbs, groups = make_micro_batches(tensors, lengths, None if max_tokens is not None else micro_batch_size,
                                     max_tokens)
    if images is not None:
        attach_images(mbs, groups, images)
    return mbs, groups


def _is_last_stage() -> bool:
    from megatron.core import parallel_state as ps

    return ps.is_pipeline_last_stage()


def _dp_group():
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_group(), ps.get_data_parallel_world_size()


class _Trained:
    """Mini-batch loop shared by actor and critic: epochs x mini-batches, one optimizer step each."""

    cfg: ActorConfig | CriticConfig
    loss: PolicyLossSettings | ValueLossSettings

    def _train(self, batch: Batch, n_mini_batches: int, keys: list[str], make_loss) -> dict:
        group, dp = _dp_group()
        if len(batch) % n_mini_batches:
            raise ValueError(f"{len(batch)} samples on this rank do not split into {n_mini_batches} mini-batches")
        metrics = []
        for _ in range(self.cfg.ppo_epochs):
            for mini in batch.split(len(batch) // n_mini_batches):
                mbs, _ = micro_batches(self.stage, mini, keys, self.cfg.micro_batch_size,
                                       self.cfg.max_tokens_per_micro_batch)
                loss_fn = make_loss(len(mbs), dp, loss_denominators(mbs, self.loss.loss_scale_factor, group))
                metrics.append(train_step(self.stage, self.optimizer, self.scheduler, mbs, loss_fn, group))
        return average(metrics)


class PolicyRole(_Trained):
    """The actor (trainable: give it loss settings) or the reference policy (frozen, log-probs only)."""

    def __init__(self, cfg: ActorConfig, model_dir: str, *, total_steps: int, temperature: float,
                 loss: PolicyLossSettings | None = None):
        self.cfg, self.temperature, self.loss = cfg, temperature, loss
        self.stage = build_stage(model_dir, cfg.dtype)
        self.optimizer = self.scheduler = None
        if cfg.freeze_vision_tower:  # before DDP and the optimizer, which then leave the tower out
            for param in vision_parameters(self.stage.core):
                param.requires_grad_(False)
        if loss is not None:
            self.optimizer, self.scheduler = build_optimizer(wrap_ddp(self.stage), cfg.optim, total_steps, cfg.dtype)

    def log_probs(self, batch: Batch, micro_batch_size: int, max_tokens: int | None,
                  with_entropy: bool = False) -> dict[str, torch.Tensor] | None:
        mbs, groups = micro_batches(self.stage, batch, ["loss_mask"], micro_batch_size, max_tokens)
        out = compute_logprobs(self.stage, mbs, self.temperature, with_entropy)
        if not _is_last_stage():
            return None
        width = batch["input_ids"].shape[1] - 1
        return {k: restore([o[k] for o in out], groups, width) for k in out[0]}

    def update(self, batch: Batch, n_mini_batches: int) -> dict:
        """Without old_log_probs in the batch the update must be its only optimizer step (see actor_loss_fn)."""
        on_policy = "old_log_probs" not in batch
        if on_policy and n_mini_batches * self.cfg.ppo_epochs != 1:
            raise ValueError(f"old_log_probs are missing but the update takes {n_mini_batches} mini-batches x "
                             f"{self.cfg.ppo_epochs} epochs; only a single optimizer step can use its own log-probs")
        keys = ["loss_mask", "advantages"] + (["rollout_log_probs"] if on_policy else ["old_log_probs"])
        keys += ["ref_log_probs"] if self.loss.use_kl_loss else []
        return self._train(batch, n_mini_batches, keys, lambda n, dp, den: actor_loss_fn(
            self.stage, self.loss, n_micro_batches=n, dp=dp, denominators=den, temperature=self.temperature,
            on_policy=on_policy))

    def named_parameters(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.stage.core.named_parameters()}


class CriticRole(_Trained):
    def __init__(self, cfg: CriticConfig, model_dir: str, *, total_steps: int, loss: ValueLossSettings):
        self.cfg, self.loss = cfg, loss
        self.stage = build_stage(model_dir, cfg.dtype, value_head=True)
        self.optimizer, self.scheduler = build_optimizer(wrap_ddp(self.stage), cfg.optim, total_steps, cfg.dtype)

    def values(self, batch: Batch) -> dict[str, torch.Tensor] | None:
        mbs, groups = micro_batches(self.stage, batch, [], self.cfg.micro_batch_size,
                                    self.cfg.max_tokens_per_micro_batch)
        out = compute_values(self.stage, mbs)
        if not _is_last_stage():
            return None
        return {"values": restore([o["values"] for o in out], groups, batch["input_ids"].shape[1] - 1)}

    def update(self, batch: Batch, n_mini_batches: int) -> dict:
        return self._train(batch, n_mini_batches, ["loss_mask", "old_values", "returns"],
                           lambda n, dp, den: critic_loss_fn(self.loss, n_micro_batches=n, dp=dp, denominators=den))
