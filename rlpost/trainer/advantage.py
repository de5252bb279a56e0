"""From scores to advantages: KL in the reward (optional), then the configured estimator."""

from __future__ import annotations

from rlpost.algorithms import apply_kl_in_reward, compute_advantages
from rlpost.batch import Batch
from rlpost.config.schema import AlgorithmConfig


def add_advantages(batch: Batch, cfg: AlgorithmConfig, kl_coef: float) -> dict:
    """Adds `token_level_rewards`, `advantages` and `returns` to the batch; returns metrics (the KL in the reward)."""
    rewards, metrics = batch["token_level_scores"], {}
    if cfg.use_kl_in_reward:
        rewards, kl = apply_kl_in_reward(rewards, batch["loss_mask"], batch["old_log_probs"], batch["ref_log_probs"],
                                         kl_coef, cfg.kl_penalty)
        metrics = {"actor/reward_kl_penalty": float(kl), "actor/reward_kl_coef": kl_coef}
    batch["token_level_rewards"] = rewards
    inputs = {"token_level_rewards": rewards, "response_mask": batch["loss_mask"], "index": batch["uid"],
              "gamma": cfg.gamma, "lam": cfg.lam, "norm_adv_by_std": cfg.norm_adv_by_std_in_grpo}
    if "values" in batch:
        inputs["values"] = batch["values"]
    if "reward_baselines" in batch:
        inputs["reward_baselines"] = batch["reward_baselines"]
    advantages, returns = compute_advantages(cfg.adv_estimator, **inputs)
    batch["advantages"], batch["returns"] = advantages.float(), returns.float()
    return metrics
