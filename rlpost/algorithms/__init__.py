"""Pure-torch RL algorithms: advantage estimators, policy/value losses, KL estimators, loss aggregation.

Nothing here imports Ray or megatron; every choice is a registry keyed by the config's string.
"""

from rlpost.algorithms.advantages import ADV_ESTIMATORS, compute_advantages
from rlpost.algorithms.aggregation import LOSS_AGG_MODES, agg_loss
from rlpost.algorithms.kl import KL_ESTIMATORS, apply_kl_in_reward, kl_penalty, make_kl_controller
from rlpost.algorithms.losses import POLICY_LOSSES, actor_loss, value_loss

__all__ = [
    "ADV_ESTIMATORS", "KL_ESTIMATORS", "LOSS_AGG_MODES", "POLICY_LOSSES", "actor_loss", "agg_loss",
    "apply_kl_in_reward", "compute_advantages", "kl_penalty", "make_kl_controller", "value_loss",
]
