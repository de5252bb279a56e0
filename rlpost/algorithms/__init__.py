"""Pure-torch RL algorithms: advantage estimators, policy/value losses, KL estimators, loss aggregation.

Nothing here imports Ray or megatron; every choice is a registry keyed by the config's string, and what an entry
needs (a critic, groups, a greedy baseline, a fixed aggregation) is registered with it.
"""

from rlpost.algorithms.advantages import ADV_ESTIMATORS, EstimatorFacts, compute_advantages
from rlpost.algorithms.aggregation import LOSS_AGG_MODES, Denominators, agg_loss
from rlpost.algorithms.kl import KL_ESTIMATORS, apply_kl_in_reward, kl_penalty, make_kl_controller
from rlpost.algorithms.losses import (
    POLICY_LOSSES,
    PolicyLossFacts,
    PolicyLossSettings,
    ValueLossSettings,
    actor_loss,
    value_loss,
)

__all__ = [
    "ADV_ESTIMATORS", "KL_ESTIMATORS", "LOSS_AGG_MODES", "POLICY_LOSSES", "Denominators", "EstimatorFacts",
    "PolicyLossFacts", "PolicyLossSettings", "ValueLossSettings", "actor_loss", "agg_loss", "apply_kl_in_reward",
    "compute_advantages", "kl_penalty", "make_kl_controller", "value_loss",
]
