"""The PPO/GRPO driver: rollout -> reward -> old/ref log-probs -> values -> advantages -> critic update -> actor
update -> weight sync, one step per batch of prompts. Every arrow is a call on a worker group; the Batch is the
only thing that travels between roles."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import torch

from rlpost.algorithms import make_kl_controller
from rlpost.batch import Batch
from rlpost.config import run_dir, save_config
from rlpost.config.schema import RLConfig
from rlpost.config.validate import recomputes_old_log_probs, rollout_devices, training_devices, uses_critic
from rlpost.data.collate import collate
from rlpost.data.dataset import RLDataset
from rlpost.data.sampler import BatchSampler, total_steps
from rlpost.rewards.registry import RewardScorer
from rlpost.rollout.agent_loop import AgentSettings, generate_multi_turn
from rlpost.rollout.client import SGLangClient
from rlpost.rollout.generate import generate, to_batch
from rlpost.trainer import checkpoints
from rlpost.trainer.advantage import compute_advantage
from rlpost.metrics import reduce_dicts
from rlpost.trainer.metrics import Timer, batch_metrics, sample_rows
from rlpost.trainer.scoring import score_samples, token_level_scores, varied_groups
from rlpost.trainer.tracking import Tracker
from rlpost.trainer.validation import validate
from rlpost.tools import load_interactions, load_tools, openai_schemas

log = logging.getLogger(__name__)


class PPOTrainer:
    def __init__(self, cfg: RLConfig):
        from transformers import AutoTokenizer

        from rlpost.cluster.rate_limit import share_rate_limits
        from rlpost.cluster.resources import connect
        from rlpost.models.hf import resolve_model_path
        from rlpost.trainer.placement import place

        self.cfg, self.run_dir = cfg, run_dir(cfg)
        save_config(cfg, self.run_dir / "config.yaml")
        actor_dir = str(resolve_model_path(cfg.actor.model_path))
        model_dirs = {"actor": actor_dir, "critic": str(resolve_model_path(cfg.critic.model_path or actor_dir))}
        self.tokenizer = AutoTokenizer.from_pretrained(actor_dir)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        mt = cfg.rollout.multi_turn
        self.tools = load_tools(mt.tool_config_path) if mt.enable and mt.tool_config_path else {}
        self.interactions = (load_interactions(mt.interaction_config_path)
                             if mt.enable and mt.interaction_config_path else {})
        schemas = openai_schemas(self.tools)  # the prompt lists the tools
        d = cfg.data
        self.train_data = RLDataset(d.train_files, self.tokenizer, d.max_prompt_length, d.prompt_key, d.image_key,
                                    d.filter_overlong_prompts, d.truncation, schemas)
        self.val_data = RLDataset(d.val_files, self.tokenizer, d.max_prompt_length, d.prompt_key, d.image_key,
                                  d.filter_overlong_prompts, d.truncation, schemas) if d.val_files else None
        self.sampler = BatchSampler(len(self.train_data), d.train_batch_size, d.shuffle, d.seed)
        self.total_steps = total_steps(self.sampler.steps_per_epoch, cfg.trainer.total_epochs,
                                       cfg.trainer.total_training_steps)
        self.scorer = RewardScorer(cfg.reward.custom_function, cfg.reward.kwargs)
        self.scorer.check_sources([s.data_source for s in self.train_data.samples])
        k = cfg.algorithm.kl_ctrl
        self.kl_ctrl = make_kl_controller(k.type, k.kl_coef, k.target_kl, k.horizon)
        self.use_ref = cfg.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward
        roles = ["actor"] + ["ref"] * self.use_ref + ["critic"] * uses_critic(cfg)
        connect(cfg.cluster.ray_address, training_devices(cfg) + (rollout_devices(cfg) if self._split else 0))
        share_rate_limits()  # tools' service rate limits hold for the whole job
        self.placement = place(cfg, model_dirs, self.total_steps, roles, d.max_prompt_length + d.max_response_length,
                               str(self.run_dir))
        self.train = self.placement.train
        self.loop = asyncio.new_event_loop()
        self.client = SGLangClient(self.placement.server_urls)
        self.step = 0
        self._resume()
        self.tracker = Tracker(cfg.trainer.logger, self.run_dir, self.total_steps, self.step,
                               dataclasses.asdict(cfg), cfg.trainer.project_name, cfg.trainer.experiment_name)

    @property
    def _split(self) -> bool:
        return self.cfg.cluster.placement == "split"

    # ---- the loop -----------------------------------------------------------------------------------------------

    def fit(self) -> None:
        cfg = self.cfg
        if cfg.trainer.val_before_train and self.step == 0:
            self.tracker.log(self.validate(), self.step)
        while self.step < self.total_steps:
            self.step += 1
            timer, metrics = Timer(), {}
            with timer("gen"):
                batch = self.rollout()
            if recomputes_old_log_probs(cfg):
                with timer("old_log_probs"):
                    batch.update(self.train.dp_call("old_log_probs", batch))
            if self.use_ref:
                with timer("ref"):
                    batch.update(self.train.dp_call("ref_log_probs", batch))
            if uses_critic(cfg):
                with timer("values"):
                    batch.update(self.train.dp_call("values", batch))
            with timer("adv"):
                metrics |= compute_advantage(batch, cfg.algorithm, self.kl_ctrl.value)
            n_mini = cfg.data.train_batch_size // cfg.actor.ppo_mini_batch_size
            if uses_critic(cfg):
                with timer("update_critic"):
                    batch["old_values"] = batch["values"]
                    n_critic = cfg.data.train_batch_size // cfg.critic.ppo_mini_batch_size
                    metrics |= reduce_dicts(self.train.dp_run("update_critic", batch, n_critic), "critic/")
            with timer("update_actor"):
                metrics |= reduce_dicts(self.train.dp_run("update_actor", batch, n_mini), "actor/")
            with timer("sync_weights"):
                self.sync_weights()
            metrics |= batch_metrics(batch, cfg.data.max_response_length) | timer.metrics(int(batch["lengths"].sum()))
            if cfg.algorithm.use_kl_in_reward:
                self.kl_ctrl.update(metrics["actor/reward_kl_penalty"], len(batch))
            last = self.step == self.total_steps
            if cfg.trainer.val_every and (self.step % cfg.trainer.val_every == 0 or last):
                metrics |= self.validate()
            self.tracker.log(metrics, self.step)
            self.tracker.log_samples(sample_rows(batch, cfg.trainer.log_samples), self.step)
            if last or (cfg.trainer.save_every and self.step % cfg.trainer.save_every == 0):
                self.save()
        self.tracker.close()

    def rollout(self) -> Batch:
        """A batch of prompts, n samples each, scored. With DAPO dynamic sampling, prompts whose samples all score
        the same are dropped and more batches generated until train_batch_size prompts remain (extra ones cut)."""
        cfg, fg = self.cfg, self.cfg.algorithm.filter_groups
        kept, rounds = [], 0
        while True:
            prompts = collate([self.train_data[i] for i in next(self.sampler)], self.pad_id)
            samples = self.generate_samples(prompts, cfg.rollout.sampling, step_key=self.step * 1000 + rounds)
            score_samples(samples, self.scorer, cfg.data.max_response_length, cfg.reward.overlong_buffer)
            if cfg.algorithm.adv_estimator == "remax":
                self._greedy_baselines(prompts, samples)
            rounds += 1
            if not fg.enable:
                kept = samples
                break
            kept += [samples[i] for i in varied_groups(samples, fg.metric)]
            want = cfg.data.train_batch_size * cfg.rollout.sampling.n
            if len(kept) >= want:
                kept = kept[:want]
                break
            if fg.max_num_gen_batches and rounds >= fg.max_num_gen_batches:
                raise RuntimeError(f"dynamic sampling: {len(kept) // cfg.rollout.sampling.n} of "
                                   f"{cfg.data.train_batch_size} prompts with varied '{fg.metric}' after {rounds} "
                                   f"generation rounds (algorithm.filter_groups.max_num_gen_batches); the data is "
                                   f"too easy or too hard for the model")
        batch = to_batch(kept, self.pad_id)
        batch["token_level_scores"] = token_level_scores(batch)
        if "reward_baseline" in batch:
            batch["reward_baselines"] = torch.tensor(batch["reward_baseline"], dtype=torch.float32)
        return batch

    def generate_samples(self, prompts: Batch, sampling, step_key: int):
        params = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                  "min_p": sampling.min_p}
        cfg = self.cfg
        if not self._split:
            self.train.call("engine_memory", False)
        multi_turn = cfg.rollout.multi_turn.enable
        bar = self.tracker.progress("generate (samples)" if multi_turn else "generate (prompts)",
                                    len(prompts) * (sampling.n if multi_turn else 1))
        done = bar.update if bar else None
        try:
            if multi_turn:
                return self.loop.run_until_complete(generate_multi_turn(
                    self.client, self.tokenizer, prompts, sampling.n, params, self._agent_settings(), self.tools,
                    self.interactions, cfg.trainer.seed, step_key, done))
            return self.loop.run_until_complete(generate(self.client, prompts, sampling.n, params,
                                                         cfg.data.max_response_length, cfg.trainer.seed, step_key,
                                                         done))
        finally:
            if bar is not None:
                bar.close()
            if not self._split:
                self.train.call("engine_memory", True)

    def _agent_settings(self) -> AgentSettings:
        mt = self.cfg.rollout.multi_turn
        return AgentSettings(self.cfg.data.max_response_length, mt.max_assistant_turns, mt.max_user_turns,
                             mt.max_parallel_calls, mt.max_tool_response_length, mt.tool_response_truncate_side,
                             mt.tool_timeout_s, mt.format)

    def _greedy_baselines(self, prompts: Batch, samples) -> None:
        """ReMax: each prompt's greedy response, scored, is the baseline of its samples."""
        greedy = dataclasses.replace(self.cfg.rollout.val_sampling, n=1, temperature=0.0)
        baselines = self.generate_samples(prompts, greedy, step_key=-self.step)
        score_samples(baselines, self.scorer, self.cfg.data.max_response_length, self.cfg.reward.overlong_buffer)
        by_uid = {b.fields["uid"]: b.fields["score"] for b in baselines}
        for s in samples:
            s.fields["reward_baseline"] = by_uid[s.fields["uid"]]

    def validate(self) -> dict:
        if self.val_data is None:
            return {}
        return validate(self, self.val_data)

    def sync_weights(self) -> None:
        self.train.call("sync_weights", f"step_{self.step}", self.placement.server_urls if self._split else None)

    # ---- checkpoints --------------------------------------------------------------------------------------------

    def save(self) -> None:
        partial = checkpoints.begin(self.run_dir, self.step)
        self.train.call("save", str(partial), {"step": self.step})
        state = {"step": self.step, "sampler": self.sampler.state_dict(), "kl_coef": self.kl_ctrl.value}
        path = checkpoints.commit(partial, self.step, state, self.cfg.trainer.keep_last)
        log.info("saved %s", path)

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

        self.loop.run_until_complete(self.client.close())
        self.loop.close()
        self.placement.shutdown()
        ray.shutdown()


def train(cfg: RLConfig) -> Path:
    """A whole run, workers freed at the end however it ends; returns the run directory."""
    trainer = PPOTrainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer.run_dir
