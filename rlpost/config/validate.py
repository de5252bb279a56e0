"""Checks that span several keys: layouts that cannot map, batch sizes that cannot split, missing files."""

from __future__ import annotations

from pathlib import Path

from rlpost.algorithms import POLICY_LOSSES
from rlpost.config.derived import estimator, rollout_devices, training_devices
from rlpost.config.schema import RLConfig


def _cluster(cfg: RLConfig) -> list[str]:
    c = cfg.cluster
    total = c.n_nodes * c.n_gpus_per_node
    if c.placement == "split" and not 0 < c.rollout_n_gpus < total:
        return [f"cluster.rollout_n_gpus = {c.rollout_n_gpus}: placement=split needs between 1 and {total - 1} "
                f"rollout devices out of cluster.n_nodes * cluster.n_gpus_per_node = {total}"]
    if c.placement == "colocated" and c.rollout_n_gpus:
        return [f"cluster.rollout_n_gpus = {c.rollout_n_gpus} is only used with cluster.placement=split; set it to 0"]
    return []


def _layout(cfg: RLConfig, role: str, tp: int, pp: int, devices: int) -> list[str]:
    if devices % (tp * pp):
        return [f"{role}.tp * {role}.pp = {tp * pp} does not divide the {devices} training devices"]
    return []


def _batches(cfg: RLConfig, role: str, mini: int, micro: int, max_tokens: int | None, dp: int) -> list[str]:
    problems = []
    batch = cfg.data.train_batch_size
    if mini > batch or batch % mini:
        problems.append(f"{role}.ppo_mini_batch_size = {mini} must divide data.train_batch_size = {batch}")
    samples = mini * cfg.rollout.sampling.n
    if samples % dp:
        problems.append(f"{role}.ppo_mini_batch_size * rollout.sampling.n = {samples} samples do not split evenly "
                        f"over data-parallel size {dp}")
    elif max_tokens is None and (samples // dp) % micro:
        problems.append(f"{role}.micro_batch_size = {micro} must divide the {samples // dp} samples each "
                        f"data-parallel rank gets per mini-batch")
    longest = cfg.data.max_prompt_length + cfg.data.max_response_length
    if max_tokens is not None and max_tokens < longest:
        problems.append(f"{role}.max_tokens_per_micro_batch = {max_tokens} cannot hold one sample of "
                        f"data.max_prompt_length + data.max_response_length = {longest} tokens")
    return problems


def _model(cfg: RLConfig) -> list[str]:
    from rlpost.models.hf import model_dims

    try:
        dims = model_dims(cfg.actor.model_path)
    except (FileNotFoundError, KeyError, ValueError) as e:
        return [f"actor.model_path = {cfg.actor.model_path!r}: {e}"]
    problems = []
    heads, kv_heads, layers = dims["num_attention_heads"], dims["num_key_value_heads"], dims["num_hidden_layers"]
    for key, value in (("actor.tp", cfg.actor.tp), ("rollout.infer_tp", cfg.rollout.infer_tp)):
        if heads % value or (key == "actor.tp" and kv_heads % value):
            problems.append(f"{key} = {value} must divide the model's {heads} attention heads"
                            + (f" and {kv_heads} key/value heads" if key == "actor.tp" else ""))
    if layers % cfg.actor.pp:
        problems.append(f"actor.pp = {cfg.actor.pp} must divide the model's {layers} layers")
    return problems


def _files(cfg: RLConfig) -> list[str]:
    problems = []
    for key in ("train_files", "val_files"):
        for i, f in enumerate(getattr(cfg.data, key)):
            if not Path(f).is_file():
                problems.append(f"data.{key}[{i}] = {f!r}: file not found (run `rlpost preprocess` first?)")
    if not cfg.data.train_files:
        problems.append("data.train_files is empty")
    mt = cfg.rollout.multi_turn
    for key in ("tool_config_path", "interaction_config_path"):
        value = getattr(mt, key)
        if value is not None and not Path(value).is_file():
            problems.append(f"rollout.multi_turn.{key} = {value!r}: file not found")
    fn = cfg.reward.custom_function
    if fn is not None:
        path, sep, name = fn.rpartition(":")
        if not sep or not name or not path.endswith(".py"):
            problems.append(f"reward.custom_function = {fn!r}: expected 'path/to/file.py:function_name'")
        elif not Path(path).is_file():
            problems.append(f"reward.custom_function = {fn!r}: file '{path}' not found")
    resume = cfg.trainer.resume
    if resume not in ("auto", "disable") and not Path(resume).exists():
        problems.append(f"trainer.resume = {resume!r}: expected 'auto', 'disable' or an existing checkpoint path")
    return problems


def cross_check(cfg: RLConfig, check_files: bool = True) -> list[str]:
    problems = _cluster(cfg)
    if problems:
        return problems
    if cfg.cluster.placement == "colocated" and cfg.rollout.engine == "sglang":
        problems.append("rollout.engine = sglang runs with cluster.placement = split only: the colocated hybrid engine "
                        "(SGLang on the training GPUs, memory handed over with /release_memory_occupation, weights "
                        "pushed as CUDA IPC handles) is not implemented; set cluster.placement=split with "
                        "cluster.rollout_n_gpus, or rollout.engine=embedded")
    devices = training_devices(cfg)
    actor_layout = _layout(cfg, "actor", cfg.actor.tp, cfg.actor.pp, devices)
    problems += actor_layout
    if not actor_layout:
        dp = devices // (cfg.actor.tp * cfg.actor.pp)
        a = cfg.actor
        problems += _batches(cfg, "actor", a.ppo_mini_batch_size, a.micro_batch_size, a.max_tokens_per_micro_batch, dp)
    if estimator(cfg).needs_critic:
        c = cfg.critic
        critic_layout = _layout(cfg, "critic", c.tp, c.pp, devices)
        problems += critic_layout
        if not critic_layout and (c.tp, c.pp) != (cfg.actor.tp, cfg.actor.pp):
            problems.append(f"critic (tp, pp) = ({c.tp}, {c.pp}) must equal actor (tp, pp) = ({cfg.actor.tp}, "
                            f"{cfg.actor.pp}): they share a process and megatron's parallel state")
        elif not critic_layout:
            dp = devices // (c.tp * c.pp)
            problems += _batches(cfg, "critic", c.ppo_mini_batch_size, c.micro_batch_size,
                                 c.max_tokens_per_micro_batch, dp)
    gen = cfg.data.gen_batch_size
    if gen is not None and gen != cfg.data.train_batch_size and not cfg.algorithm.filter_groups.enable:
        problems.append(f"data.gen_batch_size = {gen} differs from data.train_batch_size = "
                        f"{cfg.data.train_batch_size}, which only dynamic sampling (algorithm.filter_groups.enable) "
                        f"reconciles: it keeps train_batch_size prompts out of its generation rounds")
    ob = cfg.reward.overlong_buffer
    if ob.enable and ob.len >= cfg.data.max_response_length:
        problems.append(f"reward.overlong_buffer.len = {ob.len} must be below data.max_response_length = "
                        f"{cfg.data.max_response_length}")
    if rollout_devices(cfg) % cfg.rollout.infer_tp:
        problems.append(f"rollout.infer_tp = {cfg.rollout.infer_tp} does not divide the {rollout_devices(cfg)} "
                        f"rollout devices")
    est, sampling = cfg.algorithm.adv_estimator, cfg.rollout.sampling
    if estimator(cfg).needs_groups and sampling.n < 2:
        problems.append(f"rollout.sampling.n = {sampling.n}: algorithm.adv_estimator={est} compares samples of the "
                        f"same prompt and needs n >= 2")
    if estimator(cfg).needs_groups and sampling.temperature == 0 and sampling.n > 1:
        problems.append(f"rollout.sampling.temperature = 0 makes all {sampling.n} samples of a prompt identical, "
                        f"so every {est} advantage is 0")
    required = POLICY_LOSSES.facts(cfg.actor.policy_loss).loss_agg_mode
    if required is not None and cfg.actor.loss_agg_mode != required:
        problems.append(f"actor.policy_loss = {cfg.actor.policy_loss} is defined with actor.loss_agg_mode = {required} "
                        f"(verl always aggregates it so), got {cfg.actor.loss_agg_mode}; set "
                        f"actor.loss_agg_mode={required} or use the '{cfg.actor.policy_loss}' preset")
    mt = cfg.rollout.multi_turn
    if mt.enable and mt.tool_config_path is None and mt.interaction_config_path is None:
        problems.append("rollout.multi_turn.enable = true needs rollout.multi_turn.tool_config_path or "
                        "rollout.multi_turn.interaction_config_path")
    if mt.enable and not cfg.data.filter_overlong_prompts and cfg.data.truncation != "error":
        problems.append(f"data.truncation = {cfg.data.truncation} does not apply to multi-turn prompts, which are "
                        f"rendered from their messages: set data.filter_overlong_prompts = true or "
                        f"data.truncation = error")
    if check_files:
        problems += _files(cfg)
        problems += _model(cfg)
    return problems
