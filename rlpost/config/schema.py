"""The typed config schema. Types and constraints live here; every default value lives in configs/*.yaml.

Field constraints go in `metadata` and are checked by rlpost.config.loader:
    min / max (inclusive), gt / lt (exclusive), choices (a callable returning the allowed names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlpost.algorithms import ADV_ESTIMATORS, KL_ESTIMATORS, LOSS_AGG_MODES, POLICY_LOSSES


def rule(**checks) -> Any:
    return field(metadata=checks)


POSITIVE = {"min": 1}
FRACTION = {"gt": 0.0, "max": 1.0}


@dataclass
class DataConfig:
    train_files: list[str]
    val_files: list[str]
    prompt_key: str
    image_key: str
    max_prompt_length: int = rule(**POSITIVE)
    max_response_length: int = rule(**POSITIVE)
    train_batch_size: int = rule(**POSITIVE)
    gen_batch_size: int | None = rule(**POSITIVE)
    val_batch_size: int | None = rule(**POSITIVE)
    val_max_samples: int | None = rule(**POSITIVE)
    shuffle: bool
    seed: int
    filter_overlong_prompts: bool
    truncation: Literal["error", "left", "right", "middle"]


@dataclass
class OptimConfig:
    lr: float = rule(gt=0.0)
    weight_decay: float = rule(min=0.0)
    betas: list[float]
    eps: float = rule(gt=0.0)
    clip_grad: float = rule(gt=0.0)
    lr_warmup_steps: int = rule(min=0)
    lr_warmup_steps_ratio: float = rule(min=0.0, max=1.0)
    lr_schedule: Literal["constant", "cosine"]
    min_lr_ratio: float = rule(min=0.0, max=1.0)


@dataclass
class TrainedRoleConfig:
    """What the actor and the critic share: a megatron layout, batching for PPO updates, an optimizer."""

    dtype: Literal["float32", "bfloat16", "float16"]
    tp: int = rule(**POSITIVE)
    pp: int = rule(**POSITIVE)
    ppo_mini_batch_size: int = rule(**POSITIVE)
    micro_batch_size: int = rule(**POSITIVE)
    max_tokens_per_micro_batch: int | None = rule(**POSITIVE)
    ppo_epochs: int = rule(**POSITIVE)
    loss_agg_mode: str = rule(choices=LOSS_AGG_MODES.names)
    optim: OptimConfig


@dataclass
class ActorConfig(TrainedRoleConfig):
    model_path: str
    policy_loss: str = rule(choices=POLICY_LOSSES.names)
    clip_ratio_low: float = rule(**FRACTION)
    clip_ratio_high: float = rule(gt=0.0)
    clip_ratio_c: float = rule(gt=1.0)
    entropy_coeff: float = rule(min=0.0)
    use_kl_loss: bool
    kl_loss_coef: float = rule(min=0.0)
    kl_loss_type: str = rule(choices=KL_ESTIMATORS.names)
    loss_scale_factor: float | None = rule(gt=0.0)
    freeze_vision_tower: bool  # vision-language models: train the language model only
    chat_template: str | None  # a Jinja chat template used instead of the tokenizer's


@dataclass
class CriticConfig(TrainedRoleConfig):
    model_path: str | None
    cliprange_value: float = rule(gt=0.0)


@dataclass
class RefConfig:
    micro_batch_size: int = rule(**POSITIVE)
    max_tokens_per_micro_batch: int | None = rule(**POSITIVE)


@dataclass
class SamplingConfig:
    n: int = rule(**POSITIVE)
    temperature: float = rule(min=0.0)
    top_p: float = rule(**FRACTION)
    top_k: int = rule(min=-1)
    min_p: float = rule(min=0.0, lt=1.0)


@dataclass
class MultiTurnConfig:
    enable: bool
    max_assistant_turns: int | None = rule(**POSITIVE)
    max_user_turns: int | None = rule(**POSITIVE)
    max_parallel_calls: int = rule(**POSITIVE)
    max_tool_response_length: int = rule(**POSITIVE)
    tool_response_truncate_side: Literal["left", "middle", "right"]
    tool_timeout_s: float = rule(gt=0.0)
    format: Literal["hermes", "json"]
    tool_config_path: str | None
    interaction_config_path: str | None


@dataclass
class RolloutConfig:
    engine: Literal["embedded", "sglang"]
    dtype: Literal["float32", "bfloat16", "float16"]
    infer_tp: int = rule(**POSITIVE)
    max_num_seqs: int = rule(**POSITIVE)
    prefix_cache_tokens: int = rule(min=0)
    mem_fraction: float = rule(**FRACTION)
    update_weights_bucket_mb: int = rule(**POSITIVE)
    deterministic_inference: bool
    sampling: SamplingConfig
    val_sampling: SamplingConfig
    multi_turn: MultiTurnConfig


@dataclass
class KLControlConfig:
    type: Literal["fixed", "adaptive"]
    kl_coef: float = rule(min=0.0)
    target_kl: float = rule(gt=0.0)
    horizon: int = rule(**POSITIVE)


@dataclass
class FilterGroupsConfig:
    enable: bool
    metric: str
    max_num_gen_batches: int = rule(min=0)


@dataclass
class AlgorithmConfig:
    adv_estimator: str = rule(choices=ADV_ESTIMATORS.names)
    gamma: float = rule(min=0.0, max=1.0)
    lam: float = rule(min=0.0, max=1.0)
    norm_adv_by_std_in_grpo: bool
    use_kl_in_reward: bool
    kl_penalty: str = rule(choices=KL_ESTIMATORS.names)
    kl_ctrl: KLControlConfig
    filter_groups: FilterGroupsConfig


@dataclass
class OverlongBufferConfig:
    enable: bool
    len: int = rule(**POSITIVE)
    penalty_factor: float = rule(min=0.0)


@dataclass
class RewardConfig:
    custom_function: str | None
    kwargs: dict[str, Any]
    overlong_buffer: OverlongBufferConfig


@dataclass
class TrainerConfig:
    project_name: str
    experiment_name: str
    output_dir: str
    total_epochs: int = rule(**POSITIVE)
    total_training_steps: int | None = rule(**POSITIVE)
    seed: int
    logger: list[Literal["console", "jsonl", "tensorboard", "wandb"]]
    log_samples: int = rule(min=0)
    no_signal_warn_steps: int = rule(min=0)
    val_before_train: bool
    val_every: int = rule(min=0)
    save_every: int = rule(min=-1)
    resume: str
    keep_last: int = rule(**POSITIVE)


@dataclass
class ClusterConfig:
    n_nodes: int = rule(**POSITIVE)
    n_gpus_per_node: int = rule(**POSITIVE)
    placement: Literal["colocated", "split"]
    rollout_n_gpus: int = rule(min=0)
    ray_address: str | None


@dataclass
class RLConfig:
    data: DataConfig
    actor: ActorConfig
    critic: CriticConfig
    ref: RefConfig
    rollout: RolloutConfig
    algorithm: AlgorithmConfig
    reward: RewardConfig
    trainer: TrainerConfig
    cluster: ClusterConfig
