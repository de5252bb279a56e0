"""KL estimators between the policy and the reference, per token, and the KL-coefficient controllers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlpost.algorithms.masked import masked_mean
from rlpost.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")


@KL_ESTIMATORS.register("k1", "kl")
def k1(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """log(pi/ref): unbiased, high variance, can be negative."""
    return log_prob - ref_log_prob


@KL_ESTIMATORS.register("abs")
def abs_kl(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    return (log_prob - ref_log_prob).abs()


@KL_ESTIMATORS.register("k2", "mse")
def k2(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """0.5 * log-ratio^2: biased, low variance; its gradient is the true KL gradient at small divergence."""
    return 0.5 * (log_prob - ref_log_prob).square()


@KL_ESTIMATORS.register("k3", "low_var_kl")
def k3(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 = ref/pi - log(ref/pi) - 1 >= 0, clamped to [-10, 10] so one outlier token cannot blow up."""
    log_ratio = (ref_log_prob - log_prob).clamp(-20.0, 20.0)
    return (log_ratio.exp() - log_ratio - 1).clamp(-10.0, 10.0)


def kl_penalty(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, estimator: str) -> torch.Tensor:
    return KL_ESTIMATORS.get(estimator)(log_prob, ref_log_prob)


def apply_kl_in_reward(
    token_level_scores: torch.Tensor,
    response_mask: torch.Tensor,
    old_log_prob: torch.Tensor,
    ref_log_prob: torch.Tensor,
    kl_coef: float,
    estimator: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards = scores - beta * KL per token; also returns the batch's mean per-sequence KL for the controller."""
    mask = response_mask.to(token_level_scores.dtype)
    kl = kl_penalty(old_log_prob, ref_log_prob, estimator) * mask
    return token_level_scores - kl_coef * kl, masked_mean(kl, mask, dim=-1).mean()


@dataclass
class FixedKLController:
    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        del current_kl, n_steps


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): move beta proportionally towards the target KL, error clipped to +-20%."""

    value: float
    target_kl: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target_kl - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        if not math.isfinite(self.value):
            raise FloatingPointError(f"adaptive KL coefficient became {self.value} at KL {current_kl}")


def make_kl_controller(kind: str, kl_coef: float, target_kl: float, horizon: int):
    if kind == "fixed":
        return FixedKLController(kl_coef)
    if kind == "adaptive":
        return AdaptiveKLController(kl_coef, target_kl, horizon)
    raise KeyError(f"unknown KL controller '{kind}'; known: adaptive, fixed")
