"""What follows from a config: device counts, which passes a training step runs, and the loss settings. One function
per fact, so the trainer, the workers and the config check cannot disagree and no loss key is dropped on the way
to the loss."""

from __future__ import annotations

from rlpost.algorithms import ADV_ESTIMATORS, EstimatorFacts, PolicyLossSettings, ValueLossSettings
from rlpost.config.schema import RLConfig


def training_devices(cfg: RLConfig) -> int:
    total = cfg.cluster.n_nodes * cfg.cluster.n_gpus_per_node
    return total - cfg.cluster.rollout_n_gpus if cfg.cluster.placement == "split" else total


def rollout_devices(cfg: RLConfig) -> int:
    return cfg.cluster.rollout_n_gpus if cfg.cluster.placement == "split" else training_devices(cfg)


def estimator(cfg: RLConfig) -> EstimatorFacts:
    return ADV_ESTIMATORS.facts(cfg.algorithm.adv_estimator)


def uses_reference(cfg: RLConfig) -> bool:
    return cfg.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward


def needs_old_log_probs(cfg: RLConfig) -> bool:
    """A separate forward pass for old log-probs is needed unless the actor takes exactly one optimizer step per
    batch: then they equal the update forward's own log-probs (detached), which the loss uses instead. KL in the
    reward needs them before the advantages, so it keeps the pass."""
    one_step = cfg.actor.ppo_epochs == 1 and cfg.actor.ppo_mini_batch_size == cfg.data.train_batch_size
    return not one_step or cfg.algorithm.use_kl_in_reward


def loss_scale_factor(cfg: RLConfig) -> float:
    """seq-mean-token-sum-norm's constant (Dr. GRPO): actor.loss_scale_factor, else the response budget."""
    return float(cfg.actor.loss_scale_factor or cfg.data.max_response_length)


def policy_loss_settings(cfg: RLConfig) -> PolicyLossSettings:
    a = cfg.actor
    return PolicyLossSettings(
        policy_loss=a.policy_loss, loss_agg_mode=a.loss_agg_mode, clip_ratio_low=a.clip_ratio_low,
        clip_ratio_high=a.clip_ratio_high, clip_ratio_c=a.clip_ratio_c, entropy_coeff=a.entropy_coeff,
        use_kl_loss=a.use_kl_loss, kl_loss_coef=a.kl_loss_coef, kl_loss_type=a.kl_loss_type,
        loss_scale_factor=loss_scale_factor(cfg))


def value_loss_settings(cfg: RLConfig) -> ValueLossSettings:
    return ValueLossSettings(cliprange_value=cfg.critic.cliprange_value, loss_agg_mode=cfg.critic.loss_agg_mode,
                             loss_scale_factor=loss_scale_factor(cfg))
