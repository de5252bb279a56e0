"""The PPO/GRPO driver: rollout -> reward -> old/ref log-probs -> values -> advantages -> critic update -> actor
update -> weight sync, one step per batch of prompts. Every arrow is a call on one object (the rollout, the training
worker group); the Batch is the only thing that travels between roles."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from rlpost.algorithms import make_kl_controller
from rlpost.config import run_dir, save_config
from rlpost.config.derived import estimator, needs_old_log_probs, rollout_devices, training_devices, uses_reference
from rlpost.config.schema import RLConfig
from rlpost.data.collate import PromptBatches
from rlpost.data.dataset import RLDataset
from rlpost.data.images import PromptVision
from rlpost.data.sampler import BatchSampler, total_steps
from rlpost.metric_dicts import average
from rlpost.rewards.reward import Reward
from rlpost.rollout.rollout import Rollout
from rlpost.trainer import checkpoints
from rlpost.trainer.advantage import add_advantages
from rlpost.trainer.step_metrics import SignalWatch, Timer, batch_metrics, sample_rows
from rlpost.trainer.tracking import Tracker, drop_steps_after
from rlpost.trainer.validation import validate

log = logging.getLogger(__name__)


class PPOTrainer:
    def __init__(self, cfg: RLConfig):
        from rlpost.cluster.resources import connect
        from rlpost.cluster.shared_rate_limit import share_rate_limits
        from rlpost.models.hf import load_tokenizer, resolve_model_path
        from rlpost.trainer.placement import place

        self.cfg, self.run_dir = cfg, run_dir(cfg)
        save_config(cfg, self.run_dir / "config.yaml")
        actor_dir = str(resolve_model_path(cfg.actor.model_path))
        model_dirs = {"actor": actor_dir, "critic": str(resolve_model_path(cfg.critic.model_path or actor_dir))}
        tokenizer = load_tokenizer(actor_dir, cfg.actor.chat_template)
        self.vision = PromptVision.for_model(actor_dir)
        self.rollout = Rollout(cfg, tokenizer, self.vision)
        d = cfg.data
        schemas = self.rollout.tool_schemas
        self.train_data = RLDataset.from_config(d.train_files, tokenizer, d, schemas, self.vision)
        self.val_data = RLDataset.from_config(d.val_files, tokenizer, d, schemas, self.vision) if d.val_files else None
        for data in filter(None, (self.train_data, self.val_data)):
            data.check_agent_loop(cfg.rollout.multi_turn.enable)
        self.sampler = BatchSampler(len(self.train_data), d.gen_batch_size or d.train_batch_size, d.shuffle, d.seed)
        self.prompts = PromptBatches(self.train_data, self.sampler, tokenizer.pad_token_id)
        self.total_steps = total_steps(self.sampler.steps_per_epoch, cfg.trainer.total_epochs,
                                       cfg.trainer.total_training_steps)
        self.reward = Reward(cfg.reward, d.max_response_length)
        self.reward.check_sources([s.data_source for s in self.train_data.samples])
        k = cfg.algorithm.kl_ctrl
        self.kl_ctrl = make_kl_controller(k.type, k.kl_coef, k.target_kl, k.horizon)
        self.signal = SignalWatch(cfg.trainer.no_signal_warn_steps)
        self.uses_critic = estimator(cfg).needs_critic
        roles = ["actor"] + ["ref"] * uses_reference(cfg) + ["critic"] * self.uses_critic
        split = cfg.cluster.placement == "split"
        connect(cfg.cluster.ray_address, training_devices(cfg) + (rollout_devices(cfg) if split else 0))
        share_rate_limits()  # tools' service rate limits hold for the whole job
        self.placement = None
        try:
            self.placement = place(cfg, model_dirs, self.total_steps, roles,
                                   d.max_prompt_length + d.max_response_length, str(self.run_dir))
            self.train = self.placement.train
            self.step = 0
            self._resume()
            drop_steps_after(self.run_dir, self.step if self.step else -1)  # a fresh start replaces what was there
            self.tracker = Tracker(cfg.trainer.logger, self.run_dir, self.total_steps, self.step,
                                   dataclasses.asdict(cfg), cfg.trainer.project_name, cfg.trainer.experiment_name)
            self.rollout.connect(self.placement.server_urls, self.tracker.progress)
        except BaseException:
            self.close()  # a trainer that never finished starting frees what it took
            raise

    # ---- the loop -----------------------------------------------------------------------------------------------

    def fit(self) -> None:
        cfg = self.cfg
        if cfg.trainer.val_before_train and self.step == 0:
            self.tracker.log(self.validate(), self.step)
        while self.step < self.total_steps:
            self.step += 1
            timer, metrics = Timer(), {}
            batch = self.rollout.generate(self.step, self.prompts, self.reward, timer)  # generate -> reward
            if needs_old_log_probs(cfg):
                with timer("old_log_probs"):
                    batch.update(self.train.dp_call("old_log_probs", batch))
            if uses_reference(cfg):
                with timer("ref"):
                    batch.update(self.train.dp_call("ref_log_probs", batch))
            if self.uses_critic:
                with timer("values"):
                    batch.update(self.train.dp_call("values", batch))
            with timer("adv"):
                metrics |= add_advantages(batch, cfg.algorithm, self.kl_ctrl.value)
            if self.uses_critic:
                with timer("update_critic"):
                    batch["old_values"] = batch["values"]
                    n_mini = cfg.data.train_batch_size // cfg.critic.ppo_mini_batch_size
                    metrics |= average(self.train.dp_run("update_critic", batch, n_mini), "critic/")
            with timer("update_actor"):
                n_mini = cfg.data.train_batch_size // cfg.actor.ppo_mini_batch_size
                metrics |= average(self.train.dp_run("update_actor", batch, n_mini), "actor/")
            with timer("sync_weights"):
                self.sync_weights()
            self._end_step(batch, metrics | batch_metrics(batch, cfg), timer)
        self.tracker.close()

    def _end_step(self, batch, metrics: dict, timer: Timer) -> None:
        """KL controller, validation, logging and checkpointing after a step."""
        cfg = self.cfg
        metrics |= timer.metrics(int(batch["lengths"].sum()))
        if cfg.algorithm.use_kl_in_reward:
            self.kl_ctrl.update(metrics["actor/reward_kl_penalty"], len(batch))
        last = self.step == self.total_steps
        if cfg.trainer.val_every and (self.step % cfg.trainer.val_every == 0 or last):
            metrics |= self.validate()
        self.signal.update(self.step, metrics)
        self.tracker.log(metrics, self.step)
        self.tracker.log_samples(sample_rows(batch, cfg.trainer.log_samples), self.step)
        every = cfg.trainer.save_every
        if every >= 0 and (last or (every and self.step % every == 0)):
            self.save()

    def validate(self) -> dict:
        if self.val_data is None:
            return {}
        return validate(self.rollout, self.val_data, self.reward, self.cfg)

    def sync_weights(self) -> None:
        self.train.call("sync_weights", f"step_{self.step}")

    # ---- checkpoints --------------------------------------------------------------------------------------------

    def save(self) -> None:
        with checkpoints.checkpoint(self.run_dir, self.step, self.cfg.trainer.keep_last) as directory:
            self.train.call("save", str(directory), {"step": self.step})
            checkpoints.write_state(directory, {"step": self.step, "sampler": self.sampler.state_dict(),
                                                "kl_coef": self.kl_ctrl.value})
        log.info("saved checkpoint of step %d", self.step)

    def _resume(self) -> None:
        path = checkpoints.resume_path(self.cfg.trainer.resume, self.run_dir)
        if path is None:
            return
        state = checkpoints.load_state(path)
        self.train.call("load", str(path))
        self.sampler.load_state_dict(state["sampler"])
        self.kl_ctrl.value = state["kl_coef"]
        self.step = state["step"]
        self.sync_weights()  # the servers still hold the initial weights
        log.info("resumed from %s (step %d)", path, self.step)

    def close(self) -> None:
        """Frees the workers and leaves Ray (stopping the local instance if this process started it)."""
        import ray

        self.rollout.close()
        if self.placement is not None:
            self.placement.shutdown()
        ray.shutdown()


def train(cfg: RLConfig) -> Path:
    """A whole run, workers freed at the end however it ends; returns the run directory."""
    from rlpost.trainer.plots import plot_run

    trainer = PPOTrainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()
    if "jsonl" in cfg.trainer.logger:
        plot_run(trainer.run_dir)
    return trainer.run_dir
