"""verl's config keys and Hydra command line, read as rlpost's.

A verl user's run script passes `actor_rollout_ref.rollout.n=8`, `+key=value`, `~key` and
`--config-path/--config-name` (an experiment YAML whose `defaults:` list starts from `ppo_trainer` or
`ppo_megatron_trainer`). Every key goes through `translate_key`: a verl key that names an rlpost setting becomes that
setting (`actor_rollout_ref.model.path` -> `actor.model_path`); one with no meaning here (FSDP settings, kernel
switches) is listed as ignored with the reason; one that would change results in a way rlpost does not support is
refused with the reason; rlpost's own keys pass through. Values that mean something different are converted
(verl's -1 = never / all). `${...}` interpolations resolve with OmegaConf against the keys given and rlpost's
defaults under their verl names.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlpost.registry import did_you_mean

ARF = "actor_rollout_ref"
class _Delete:
    """The value of Hydra's `~key`: back to the default."""

    def __repr__(self) -> str:
        return "~ (the default)"


DELETE = _Delete()
VERL_BASES = ("ppo_trainer", "ppo_megatron_trainer")  # verl's trainer configs an experiment YAML may extend


@dataclass
class Outcome:
    """What one verl key became: rlpost settings, or a note that it is ignored, or a refusal."""

    settings: dict[str, Any] = field(default_factory=dict)
    ignored: str | None = None  # why it has no effect here
    refused: str | None = None  # why it cannot run here
    note: str | None = None  # what runs instead, when the key is honoured differently


Rule = Callable[[Any, dict[str, Any]], Outcome]  # (value, every key given) -> outcome


def to(target: str, convert: Callable[[Any], Any] = lambda v: v) -> Rule:
    return lambda value, given: Outcome({target: convert(value)})


def ignore(reason: str) -> Rule:
    return lambda value, given: Outcome(ignored=reason)


def only(accepted: Callable[[Any], bool], reason: str) -> Rule:
    """Ignored while its value is one rlpost behaves as (verl's default); refused otherwise."""
    return lambda value, given: Outcome(ignored="rlpost behaves as this value does") if accepted(value) else \
        Outcome(refused=reason)


def never_is_zero(value: Any) -> Any:
    """verl's <= 0 (never) -> rlpost's 0 (never)."""
    return 0 if value is not None and value < 0 else value


def all_is_null(value: Any) -> Any:
    """verl's -1 (all) -> rlpost's null (all)."""
    return None if value is not None and value < 0 else value


def _falsy(value: Any) -> bool:
    return not value


def _dynamic_bsz(prefix: str, budget_key: str, target: str) -> Rule:
    """use_dynamic_bsz + a token budget -> rlpost's token-budget micro-batches (the budget alone does nothing)."""

    def rule(value: Any, given: dict[str, Any]) -> Outcome:
        if not value:
            return Outcome({target: None})
        budget = given.get(f"{prefix}.{budget_key}")
        if budget is None:
            return Outcome(refused=f"use_dynamic_bsz needs {prefix}.{budget_key}, the tokens per micro-batch")
        return Outcome({target: budget})

    return rule


def _budget_with(prefix: str) -> Rule:
    return lambda value, given: Outcome(ignored=f"read with {prefix}.use_dynamic_bsz" if given.get(
        f"{prefix}.use_dynamic_bsz") else "used only with use_dynamic_bsz=true")


def _reward_path(value: Any, given: dict[str, Any]) -> Outcome:
    if not value:
        return Outcome(ignored="no custom reward file")
    return Outcome({"reward.custom_function": f"{value}:{given.get('custom_reward_function.name') or 'compute_score'}"})


def _resume_mode(value: Any, given: dict[str, Any]) -> Outcome:
    if value == "resume_path":
        path = given.get("trainer.resume_from_path")
        if not path:
            return Outcome(refused="resume_mode=resume_path needs trainer.resume_from_path")
        return Outcome({"trainer.resume": str(path)})
    if value in ("auto", "disable"):
        return Outcome({"trainer.resume": value})
    return Outcome(refused=f"resume_mode must be auto, disable or resume_path, got {value!r}")


def _rollout_name(value: Any, given: dict[str, Any]) -> Outcome:
    """SGLang servers run beside the trainer here (cluster.placement=split); verl's colocated hybrid engine is
    rlpost's embedded engine, which serves SGLang's API on the training GPUs."""
    if value not in ("sglang", "vllm", "hf"):
        return Outcome(refused=f"rollout.name must be sglang, vllm or hf, got {value!r}")
    if value != "hf" and (given.get("cluster.placement") == "split" or given.get("rollout.n_gpus_per_node")):
        note = "rlpost runs SGLang servers, not vLLM: rollout.engine=sglang" if value == "vllm" else None
        return Outcome({"rollout.engine": "sglang"}, note=note)
    return Outcome({"rollout.engine": "embedded"}, note=(
        f"colocated rollouts (verl's hybrid engine) run on rlpost's embedded engine, which serves SGLang's API on "
        f"the training GPUs; {value} servers run with cluster.placement=split (rollout.engine=sglang)"))


def _filter_metric(value: Any, given: dict[str, Any]) -> Outcome:
    """DAPO's group filter: verl's seq_reward is the sequence's score; seq_final_reward is too unless a KL penalty
    is in the reward."""
    if value == "seq_reward" or (value == "seq_final_reward" and not given.get("algorithm.use_kl_in_reward")):
        return Outcome({"algorithm.filter_groups.metric": "score"}, note=f"{value} is the sequence's score here")
    if value == "seq_final_reward":
        return Outcome(refused="seq_final_reward with algorithm.use_kl_in_reward=true (the score minus the KL "
                               "penalty) is not a filter metric rlpost has; use score or acc")
    return Outcome({"algorithm.filter_groups.metric": value})


def _tool_format(value: Any, given: dict[str, Any]) -> Outcome:
    """verl's older SGLang rollout took SGLang's parser names: qwen / qwen25 are the hermes <tool_call> format."""
    if value in ("qwen", "qwen25"):
        return Outcome({"rollout.multi_turn.format": "hermes"}, note=f"{value!r} is the <tool_call> format: hermes")
    return Outcome({"rollout.multi_turn.format": value})


def _same_as(data_key: str, why: str = "") -> Rule:
    """A key whose value rlpost takes from `data_key` (verl's rollout lengths default to data's): a different value
    is refused."""
    why = why or f"rlpost's rollout uses {data_key}"

    def rule(value: Any, given: dict[str, Any]) -> Outcome:
        if data_key in given and value != given[data_key]:
            return Outcome(refused=f"must equal {data_key} ({given[data_key]}): {why}")
        return Outcome(ignored=why)

    return rule


def _warmup_steps(value: Any, given: dict[str, Any], role: str) -> Outcome:
    """verl's -1 (the default): lr_warmup_steps_ratio decides, as rlpost's 0 does."""
    return Outcome({f"{role}.optim.lr_warmup_steps": 0 if value is None or value < 0 else value})


def _schedule(value: Any, given: dict[str, Any], role: str) -> Outcome:
    if value is None:  # verl's warmup_style defaults to null: lr_scheduler_type decides
        return Outcome(ignored="null: the other spelling decides")
    if value in ("constant", "cosine"):
        return Outcome({f"{role}.optim.lr_schedule": value})
    return Outcome(refused=f"learning-rate schedule {value!r}: rlpost has constant and cosine")


def _trained_role(verl: str, role: str) -> dict[str, Rule]:
    """Keys verl's actor and critic share (`verl` is the section's verl prefix, `role` rlpost's)."""
    optim = f"{verl}.optim"
    return {
        f"{verl}.ppo_mini_batch_size": to(f"{role}.ppo_mini_batch_size"),
        f"{verl}.ppo_micro_batch_size_per_gpu": to(f"{role}.micro_batch_size"),
        f"{verl}.ppo_micro_batch_size": only(lambda v: v is None, "the global micro-batch size is deprecated in verl; "
                                                                  "give ppo_micro_batch_size_per_gpu"),
        f"{verl}.ppo_epochs": to(f"{role}.ppo_epochs"),
        f"{verl}.use_dynamic_bsz": _dynamic_bsz(verl, "ppo_max_token_len_per_gpu",
                                                f"{role}.max_tokens_per_micro_batch"),
        f"{verl}.ppo_max_token_len_per_gpu": _budget_with(verl),
        f"{verl}.loss_agg_mode": to(f"{role}.loss_agg_mode"),
        f"{verl}.grad_clip": to(f"{role}.optim.clip_grad"),
        f"{optim}.lr": to(f"{role}.optim.lr"),
        f"{optim}.weight_decay": to(f"{role}.optim.weight_decay"),
        f"{optim}.betas": to(f"{role}.optim.betas"),
        f"{optim}.eps": to(f"{role}.optim.eps"),
        f"{optim}.clip_grad": to(f"{role}.optim.clip_grad"),
        f"{optim}.min_lr_ratio": to(f"{role}.optim.min_lr_ratio", lambda v: v or 0.0),
        f"{optim}.lr_warmup_steps": lambda v, g: _warmup_steps(v, g, role),
        f"{optim}.lr_warmup_steps_ratio": to(f"{role}.optim.lr_warmup_steps_ratio", lambda v: v or 0.0),
        f"{optim}.warmup_style": lambda v, g: _schedule(v, g, role),
        f"{optim}.lr_scheduler_type": lambda v, g: _schedule(v, g, role),
        f"{optim}.lr_decay_style": lambda v, g: _schedule(v, g, role),
        f"{optim}.total_training_steps": ignore("set by the trainer from the run's step count"),
        f"{optim}.num_cycles": only(lambda v: v in (None, 0.5), "rlpost's cosine schedule is a half cycle (0.5)"),
        f"{optim}.optimizer": only(lambda v: v in (None, "adam", "AdamW"), "rlpost's optimizer is Adam(W)"),
        f"{optim}.clip_grad_norm": to(f"{role}.optim.clip_grad"),
        f"{optim}.override_optimizer_config": ignore("optimizer offload and precision settings; rlpost's optimizer "
                                                     "keeps fp32 master weights on the GPU"),
        f"{verl}.megatron.dtype": to(f"{role}.dtype"),
        f"{verl}.megatron.use_remove_padding": ignore(PACKING),
        f"{verl}.megatron.vanilla_mbridge": ignore("rlpost converts Hugging Face weights itself"),
        f"{verl}.megatron.tensor_model_parallel_size": to(f"{role}.tp"),
        f"{verl}.megatron.pipeline_model_parallel_size": to(f"{role}.pp"),
        f"{verl}.megatron.virtual_pipeline_model_parallel_size": only(
            lambda v: v in (None, 1), "rlpost's pipeline has no virtual stages (interleaving)"),
        f"{verl}.megatron.context_parallel_size": only(lambda v: v in (None, 1), "context parallelism is not built"),
        f"{verl}.megatron.expert_model_parallel_size": only(lambda v: v in (None, 1), "no MoE models in rlpost"),
        f"{verl}.megatron.expert_tensor_parallel_size": only(lambda v: v in (None, 1), "no MoE models in rlpost"),
        f"{verl}.megatron.sequence_parallel": ignore("rlpost turns sequence parallelism on with tp > 1 on GPUs"),
        f"{verl}.megatron.use_distributed_optimizer": ignore("rlpost's optimizer is megatron's distributed one"),
        f"{verl}.megatron.param_offload": ignore(OFFLOAD),
        f"{verl}.megatron.grad_offload": ignore(OFFLOAD),
        f"{verl}.megatron.optimizer_offload": ignore(OFFLOAD),
        f"{verl}.megatron.seed": ignore("rlpost seeds everything from trainer.seed"),
        f"{verl}.megatron.use_dist_checkpointing": ignore("rlpost's checkpoints are always megatron distributed ones"),
        f"{verl}.megatron.dist_checkpointing_path": ignore("models load from Hugging Face directories"),
        f"{verl}.megatron.use_mbridge": ignore("rlpost converts Hugging Face weights itself"),
        f"{verl}.megatron.override_transformer_config": ignore("rlpost builds megatron's config from the model's"),
        f"{verl}.megatron.override_ddp_config": ignore("rlpost sets megatron's DDP config"),
        f"{verl}.fsdp_config": ignore(FSDP),
        f"{verl}.checkpoint": ignore("rlpost saves model, optimizer and RNG state in every checkpoint"),
        f"{verl}.ulysses_sequence_parallel_size": only(lambda v: v in (None, 1), "Ulysses sequence parallelism is "
                                                                                 "FSDP's; rlpost has megatron's"),
        f"{verl}.shuffle": ignore("rlpost does not shuffle within a mini-batch"),
        f"{verl}.use_torch_compile": ignore("a kernel switch; no effect on results"),
        f"{verl}.strategy": only(lambda v: v in (None, "megatron", "fsdp", "fsdp2"),
                                 "rlpost trains with megatron-core"),
        f"{verl}.profiler": ignore("profiling is not built"),
        f"{verl}.data_loader_seed": ignore("rlpost seeds everything from trainer.seed"),
        f"{verl}.rollout_n": ignore("set from the rollout's n"),
        f"{verl}.use_remove_padding": ignore(PACKING),
    }


OFFLOAD = "rlpost keeps training state on the GPU (the hybrid engine frees the KV cache instead)"
FSDP = "rlpost trains with megatron-core, not FSDP"
PACKING = "rlpost always packs sequences without padding"
KERNELS = "a kernel or memory switch that does not change results"
SERVERS = "SGLang server settings rlpost chooses itself"

_A, _R, _REF, _M = f"{ARF}.actor", f"{ARF}.rollout", f"{ARF}.ref", f"{ARF}.model"

RULES: dict[str, Rule] = {
    # ---- the model -------------------------------------------------------------------------------------------
    f"{_M}.path": to("actor.model_path"),
    f"{_M}.tokenizer_path": only(lambda v: v is None, "the tokenizer is the model's own"),
    f"{_M}.use_remove_padding": ignore(PACKING),
    f"{_M}.enable_gradient_checkpointing": ignore("activation recomputation is not built; activations are kept"),
    f"{_M}.enable_activation_offload": ignore(OFFLOAD),
    f"{_M}.use_fused_kernels": ignore(KERNELS),
    f"{_M}.fused_kernel_options": ignore(KERNELS),
    f"{_M}.use_liger": ignore(KERNELS),
    f"{_M}.use_shm": ignore("models load from a local directory"),
    f"{_M}.trust_remote_code": ignore("rlpost builds Llama and Qwen2/2.5/3 (VL) itself; no remote code runs"),
    f"{_M}.external_lib": only(lambda v: v is None, "rlpost builds only the architectures it knows"),
    f"{_M}.override_config": only(lambda v: not v, "rlpost takes the model's config as it is"),
    f"{_M}.custom_chat_template": to("actor.chat_template"),
    f"{_M}.lora_rank": only(_falsy, "LoRA is not built; rlpost trains all weights"),
    f"{_M}.lora.rank": only(_falsy, "LoRA is not built; rlpost trains all weights"),
    f"{_M}.lora": ignore("LoRA is not built"),
    f"{_M}.lora_alpha": ignore("LoRA is not built"),
    f"{_M}.target_modules": ignore("LoRA is not built"),
    f"{_M}.exclude_modules": ignore("LoRA is not built"),
    f"{_M}.use_fused_kernel": ignore(KERNELS),
    f"{_M}.tiled_mlp": ignore(KERNELS),
    f"{ARF}.hybrid_engine": only(bool, "verl's hybrid_engine=false is not a mode rlpost has; cluster.placement "
                                       "chooses colocated or split"),
    f"{ARF}.nccl_timeout": ignore("rlpost's collectives use megatron's timeouts"),
    # ---- the actor --------------------------------------------------------------------------------------------
    **_trained_role(_A, "actor"),
    f"{_A}.clip_ratio_low": to("actor.clip_ratio_low"),
    f"{_A}.clip_ratio_high": to("actor.clip_ratio_high"),
    f"{_A}.clip_ratio_c": to("actor.clip_ratio_c"),
    f"{_A}.entropy_coeff": to("actor.entropy_coeff"),
    f"{_A}.use_kl_loss": to("actor.use_kl_loss"),
    f"{_A}.kl_loss_coef": to("actor.kl_loss_coef"),
    f"{_A}.kl_loss_type": to("actor.kl_loss_type"),
    f"{_A}.loss_scale_factor": to("actor.loss_scale_factor"),
    f"{_A}.policy_loss.loss_mode": to("actor.policy_loss"),
    f"{_A}.policy_loss": ignore("settings of loss modes rlpost does not have (clip_cov, kl_cov, ...); "
                                "policy_loss.loss_mode is checked against rlpost's"),
    f"{_A}.router_replay": only(lambda v: not v or v.get("mode") in (None, "disabled"), "no MoE models in rlpost"),
    f"{_A}.clip_ratio": lambda v, g: Outcome(ignored=(
        "verl's clip_ratio_low/high (0.2 unless set) take precedence over it, so it changes nothing in verl either; "
        "set clip_ratio_low / clip_ratio_high")),
    f"{_A}.entropy_from_logits_with_chunking": ignore(KERNELS),
    f"{_A}.entropy_checkpointing": ignore(KERNELS),
    f"{_A}.freeze_vision_tower": to("actor.freeze_vision_tower"),
    # ---- the reference ----------------------------------------------------------------------------------------
    f"{_REF}.log_prob_micro_batch_size_per_gpu": to("ref.micro_batch_size"),
    f"{_REF}.log_prob_micro_batch_size": only(lambda v: v is None, "deprecated in verl; give "
                                                                   "log_prob_micro_batch_size_per_gpu"),
    f"{_REF}.log_prob_use_dynamic_bsz": _dynamic_bsz(_REF, "log_prob_max_token_len_per_gpu",
                                                     "ref.max_tokens_per_micro_batch"),
    f"{_REF}.log_prob_max_token_len_per_gpu": _budget_with(_REF),
    f"{_REF}.fsdp_config": ignore(FSDP),
    f"{_REF}.megatron": ignore("the reference model uses the actor's layout"),
    f"{_REF}.ulysses_sequence_parallel_size": ignore("the reference model uses the actor's layout"),
    f"{_REF}.strategy": ignore("rlpost trains with megatron-core"),
    f"{_REF}.use_torch_compile": ignore(KERNELS),
    f"{_REF}.profiler": ignore("profiling is not built"),
    f"{_REF}.entropy_from_logits_with_chunking": ignore(KERNELS),
    f"{_REF}.entropy_checkpointing": ignore(KERNELS),
    # ---- the rollout ------------------------------------------------------------------------------------------
    f"{_R}.name": _rollout_name,
    f"{_R}.mode": ignore("rlpost's rollout is always asynchronous (requests to servers, agent loops concurrent)"),
    f"{_R}.n": to("rollout.sampling.n"),
    f"{_R}.temperature": to("rollout.sampling.temperature"),
    f"{_R}.top_p": to("rollout.sampling.top_p"),
    f"{_R}.top_k": to("rollout.sampling.top_k"),
    f"{_R}.do_sample": only(bool, "training rollouts must sample; use temperature 0 for greedy"),
    f"{_R}.val_kwargs.n": to("rollout.val_sampling.n"),
    f"{_R}.val_kwargs.temperature": to("rollout.val_sampling.temperature"),
    f"{_R}.val_kwargs.top_p": to("rollout.val_sampling.top_p"),
    f"{_R}.val_kwargs.top_k": to("rollout.val_sampling.top_k"),
    f"{_R}.val_kwargs.do_sample": ignore("verl's agent loop does not read it either: val_kwargs.temperature decides "
                                         "(0, the default, is greedy)"),
    f"{_R}.tensor_model_parallel_size": to("rollout.infer_tp"),
    f"{_R}.data_parallel_size": only(lambda v: v in (None, 1), "rlpost runs one server per infer_tp GPUs"),
    f"{_R}.expert_parallel_size": only(lambda v: v in (None, 1), "no MoE models in rlpost"),
    f"{_R}.pipeline_model_parallel_size": only(lambda v: v in (None, 1), "rollout servers do not pipeline"),
    f"{_R}.gpu_memory_utilization": to("rollout.mem_fraction"),
    f"{_R}.max_num_seqs": to("rollout.max_num_seqs"),
    f"{_R}.dtype": to("rollout.dtype"),
    f"{_R}.prompt_length": _same_as("data.max_prompt_length"),
    f"{_R}.response_length": _same_as("data.max_response_length"),
    f"{_R}.max_model_len": ignore("rlpost sizes servers from data.max_prompt_length + max_response_length"),
    f"{_R}.max_num_batched_tokens": ignore(SERVERS),
    f"{_R}.enable_chunked_prefill": ignore(SERVERS),
    f"{_R}.enforce_eager": ignore(SERVERS),
    f"{_R}.free_cache_engine": ignore("the hybrid engine always frees the KV cache while training"),
    f"{_R}.load_format": ignore("weights reach the servers from the actor after each update"),
    f"{_R}.layered_summon": ignore(FSDP),
    f"{_R}.disable_log_stats": ignore(SERVERS),
    f"{_R}.enable_prefix_caching": ignore("the servers' prefix cache is always on"),
    f"{_R}.cudagraph_capture_sizes": ignore(SERVERS),
    f"{_R}.engine_kwargs": ignore(SERVERS),
    f"{_R}.ignore_eos": only(_falsy, "rollouts stop at eos"),
    f"{_R}.calculate_log_probs": ignore("rlpost always returns rollout log-probs"),
    f"{_R}.log_prob_micro_batch_size_per_gpu": ignore("old log-probs use actor.micro_batch_size"),
    f"{_R}.log_prob_micro_batch_size": ignore("old log-probs use actor.micro_batch_size"),
    f"{_R}.log_prob_use_dynamic_bsz": ignore("old log-probs use the actor's micro-batching"),
    f"{_R}.log_prob_max_token_len_per_gpu": ignore("old log-probs use the actor's micro-batching"),
    f"{_R}.update_weights_bucket_megabytes": to("rollout.update_weights_bucket_mb"),
    f"{_R}.checkpoint_engine.update_weights_bucket_megabytes": to("rollout.update_weights_bucket_mb"),
    f"{_R}.checkpoint_engine": ignore("weights reach the servers through rlpost's resharding"),
    f"{_R}.multi_stage_wake_up": ignore("the hybrid engine wakes weights and KV cache as it needs"),
    f"{_R}.over_sample_rate": ignore("rlpost waits for every sample (verl aborts the slowest share to save time)"),
    f"{_R}.agent.num_workers": ignore("rlpost runs agent loops concurrently in one event loop"),
    f"{_R}.agent.default_agent_loop": ignore("the agent loop is chosen by rollout.multi_turn.enable"),
    f"{_R}.agent.agent_loop_config_path": only(lambda v: v is None, "custom agent loops are not built"),
    f"{_R}.trace": ignore("rollout tracing is not built; samples.jsonl holds every sample"),
    f"{_R}.logprobs_mode": only(lambda v: v in (None, "processed_logprobs"), "rollout log-probs are of the sampling "
                                                                            "distribution (after temperature)"),
    f"{_R}.scheduling_policy": ignore(SERVERS),
    f"{_R}.multi_turn.num_repeat_rollouts": ignore("not read by verl's tool agent loop either"),
    f"{_R}.mtp": ignore("multi-token prediction is not built"),
    f"{_R}.multi_turn.enable": to("rollout.multi_turn.enable"),
    f"{_R}.multi_turn.max_assistant_turns": to("rollout.multi_turn.max_assistant_turns"),
    f"{_R}.multi_turn.max_user_turns": to("rollout.multi_turn.max_user_turns"),
    f"{_R}.multi_turn.max_parallel_calls": to("rollout.multi_turn.max_parallel_calls"),
    f"{_R}.multi_turn.max_tool_response_length": to("rollout.multi_turn.max_tool_response_length"),
    f"{_R}.multi_turn.tool_response_truncate_side": to("rollout.multi_turn.tool_response_truncate_side"),
    f"{_R}.multi_turn.tool_config_path": to("rollout.multi_turn.tool_config_path"),
    f"{_R}.multi_turn.interaction_config_path": to("rollout.multi_turn.interaction_config_path"),
    f"{_R}.multi_turn.format": _tool_format,
    f"{_R}.multi_turn.use_inference_chat_template": only(
        _falsy, "rlpost trains on the tokens the policy saw, through the chat template as it renders"),
    f"{_R}.multi_turn.tokenization_sanity_check_mode": ignore(
        "rlpost builds multi-turn ids incrementally and keeps the policy's tokens as sampled"),
    f"{_R}.multi_turn.completion_callback": only(lambda v: v is None, "custom completion callbacks are not built"),
    f"{_R}.multi_turn.max_turns": to("rollout.multi_turn.max_assistant_turns"),
    # ---- the critic -------------------------------------------------------------------------------------------
    **_trained_role("critic", "critic"),
    "critic.model.path": to("critic.model_path"),
    "critic.model.tokenizer_path": ignore("the critic reads the actor's tokens"),
    "critic.model.enable_gradient_checkpointing": ignore("activation recomputation is not built"),
    "critic.model.use_remove_padding": ignore(PACKING),
    "critic.model.trust_remote_code": ignore("no remote code runs"),
    "critic.model.override_config": only(lambda v: not v, "rlpost takes the model's config as it is"),
    "critic.model.fsdp_config": ignore(FSDP),
    "critic.model.external_lib": only(lambda v: v is None, "rlpost builds only the architectures it knows"),
    "critic.model.lora_rank": only(_falsy, "LoRA is not built"),
    "critic.cliprange_value": to("critic.cliprange_value"),
    "critic.forward_micro_batch_size_per_gpu": ignore("values use critic.micro_batch_size"),
    "critic.forward_max_token_len_per_gpu": ignore("values use the critic's micro-batching"),
    "critic.enable": ignore("the critic is used when the estimator needs values (gae)"),
    # ---- data -------------------------------------------------------------------------------------------------
    "data.val_max_samples": to("data.val_max_samples", all_is_null),
    "data.train_max_samples": only(lambda v: v is None or v < 0, "a subset of the training rows is not built; "
                                                                "cut the file instead"),
    "data.validation_shuffle": ignore("validation reads its rows in order"),
    "data.gen_batch_size": to("data.gen_batch_size"),
    "data.return_raw_chat": ignore("rlpost always keeps the raw chat (the agent loop renders it)"),
    "data.return_raw_input_ids": ignore("the prompt's ids travel with every sample"),
    "data.return_full_prompt": ignore("the rendered prompt travels with every sample"),
    "data.return_multi_modal_inputs": ignore("image rows always carry their model inputs"),
    "data.filter_overlong_prompts_workers": ignore("prompts are measured in one process"),
    "data.dataloader_num_workers": ignore("prompts are read in the driver"),
    "data.tokenizer": only(lambda v: v is None, "the tokenizer is the actor's"),
    "data.use_shm": ignore("data loads from local files"),
    "data.trust_remote_code": ignore("no remote code runs"),
    "data.custom_cls.path": only(lambda v: v is None, "custom dataset classes are not built; rows must be in "
                                                     "verl's schema"),
    "data.custom_cls.name": ignore("custom dataset classes are not built"),
    "data.reward_fn_key": only(lambda v: v in (None, "data_source"), "rule rewards are chosen by data_source"),
    "data.image_patch_size": ignore("patch size comes from the model's image processor"),
    "data.video_key": ignore("videos are not supported; rows with <video> are refused"),
    "data.sampler": ignore("rlpost's sampler shuffles with data.seed"),
    "data.datagen": ignore("data generation during training is not built"),
    "data.apply_chat_template_kwargs": only(lambda v: not v, "chat templates are rendered with their defaults"),
    # ---- rewards ----------------------------------------------------------------------------------------------
    "custom_reward_function.path": _reward_path,
    "custom_reward_function.name": lambda v, g: Outcome(ignored="read with custom_reward_function.path"),
    "custom_reward_function.reward_kwargs": to("reward.kwargs", lambda v: dict(v or {})),
    "reward_model.enable": only(_falsy, "model-based rewards are not built; rewards are rules or custom functions"),
    "reward_model.reward_manager": only(lambda v: v in (None, "naive", "dapo", "batch"),
                                        "rlpost's reward is verl's naive / dapo manager (per-sample functions)"),
    "reward_model.launch_reward_fn_async": ignore("rewards are computed in the driver between rollout and update"),
    "reward_model.overlong_buffer.enable": to("reward.overlong_buffer.enable"),
    "reward_model.overlong_buffer.len": to("reward.overlong_buffer.len"),
    "reward_model.overlong_buffer.penalty_factor": to("reward.overlong_buffer.penalty_factor"),
    "reward_model.overlong_buffer.log": ignore("the overlong penalty is always in the step metrics"),
    "reward_model.reward_kwargs.overlong_buffer_cfg.enable": to("reward.overlong_buffer.enable"),
    "reward_model.reward_kwargs.overlong_buffer_cfg.len": to("reward.overlong_buffer.len"),
    "reward_model.reward_kwargs.overlong_buffer_cfg.penalty_factor": to("reward.overlong_buffer.penalty_factor"),
    "reward_model.reward_kwargs.overlong_buffer_cfg.log": ignore("the overlong penalty is always in the metrics"),
    "reward_model.reward_kwargs.max_resp_len": _same_as("data.max_response_length"),
    "reward_model.model": ignore("model-based rewards are not built"),
    "reward_model.rollout": ignore("model-based rewards are not built"),
    "reward_model.use_reward_loop": ignore("rewards are computed in the driver between rollout and update"),
    "reward_model.num_workers": ignore("rewards are computed in the driver"),
    "reward_model.enable_resource_pool": only(_falsy, "model-based rewards are not built"),
    "reward_model.nnodes": ignore("model-based rewards are not built"),
    "reward_model.n_gpus_per_node": ignore("model-based rewards are not built"),
    "reward_model.mini_batch_size": ignore("model-based rewards are not built"),
    "reward_model.micro_batch_size_per_gpu": ignore("model-based rewards are not built"),
    "reward_model.strategy": ignore("model-based rewards are not built"),
    "reward_model.sandbox_fusion": only(lambda v: not v or not v.get("url"), "reward-side Sandbox Fusion is not "
                                                                              "built; the code tool is"),
    # ---- algorithm ----------------------------------------------------------------------------------------------
    "algorithm.filter_groups.metric": _filter_metric,
    "algorithm.use_pf_ppo": only(_falsy, "PF-PPO is not built"),
    "algorithm.pf_ppo": ignore("PF-PPO is not built"),
    "algorithm.rollout_correction": only(lambda v: not v or not (v.get("rollout_is") or v.get("rollout_rs")),
                                         "rollout importance-sampling correction is not built"),
    "algorithm.rollout_is": only(_falsy, "rollout importance-sampling correction is not built"),
    "algorithm.rollout_is_threshold": only(lambda v: v is None, "rollout importance sampling is not built"),
    # ---- trainer ----------------------------------------------------------------------------------------------
    "trainer.nnodes": to("cluster.n_nodes"),
    "rollout.n_gpus_per_node": lambda v, g: Outcome({"cluster.placement": "split",
                                                     "cluster.rollout_n_gpus": v * (g.get("rollout.nnodes") or 1)}),
    "rollout.nnodes": lambda v, g: Outcome(ignored="read with rollout.n_gpus_per_node (rollout GPUs = nnodes x "
                                                   "n_gpus_per_node, in their own pool)"),
    "trainer.n_gpus_per_node": to("cluster.n_gpus_per_node"),
    "trainer.save_freq": to("trainer.save_every", lambda v: -1 if v is not None and v <= 0 else v),  # <= 0: never
    "trainer.test_freq": to("trainer.val_every", never_is_zero),
    "trainer.resume_mode": _resume_mode,
    "trainer.resume_from_path": lambda v, g: Outcome(ignored="read with trainer.resume_mode=resume_path") if
    g.get("trainer.resume_mode") == "resume_path" else Outcome(ignored="used only with resume_mode=resume_path"),
    "trainer.max_actor_ckpt_to_keep": to("trainer.keep_last", lambda v: v if v and v > 0 else 1000),
    "trainer.max_critic_ckpt_to_keep": ignore("the critic's checkpoints are kept with the actor's "
                                              "(trainer.keep_last)"),
    "trainer.critic_warmup": only(_falsy, "critic warm-up steps are not built"),
    "trainer.default_local_dir": ignore("checkpoints go to trainer.output_dir/project_name/experiment_name"),
    "trainer.default_hdfs_dir": ignore("no HDFS upload"),
    "trainer.del_local_ckpt_after_load": ignore("checkpoints are kept (trainer.keep_last)"),
    "trainer.device": only(lambda v: v in (None, "cuda", "cpu"), "rlpost runs on CUDA GPUs or, for tests, CPUs"),
    "trainer.balance_batch": ignore("micro-batches are balanced by tokens when a token budget is set"),
    "trainer.log_val_generations": ignore("validation logs its metrics; samples.jsonl holds training samples"),
    "trainer.rollout_data_dir": ignore("samples.jsonl in the run directory holds the samples"),
    "trainer.validation_data_dir": ignore("validation logs its metrics"),
    "trainer.ray_wait_register_center_timeout": ignore("Ray start-up is rlpost's"),
    "trainer.esi_redundant_time": ignore("elastic-instance saving is not built"),
    "trainer.profile_steps": ignore("profiling is not built"),
    "trainer.profile_continuous_steps": ignore("profiling is not built"),
    "trainer.use_legacy_worker_impl": ignore("rlpost's workers are its own"),
    "trainer.val_only": only(_falsy, "use `rlpost eval` to evaluate a model"),
    "trainer.total_epochs": to("trainer.total_epochs"),
    "trainer.total_training_steps": to("trainer.total_training_steps"),
    "trainer.log_freq": ignore("metrics are logged every step"),
    "trainer.debug": ignore("no debug mode"),
    "trainer.checkpoint": ignore("rlpost saves model, optimizer and RNG state in every checkpoint"),
    # ---- the rest of verl's tree --------------------------------------------------------------------------------
    "ray_init": ignore("Ray starts from cluster.ray_address or RAY_ADDRESS"),
    "ray_kwargs": ignore("Ray starts from cluster.ray_address or RAY_ADDRESS"),
    "global_profiler": ignore("profiling is not built"),
    "transfer_queue": ignore("the Batch travels through Ray's object store"),
    "hydra": ignore("Hydra's own settings (search path, run directory)"),
    "critic.strategy": only(lambda v: v in (None, "megatron", "fsdp", "fsdp2"), "rlpost trains with megatron-core"),
    "critic.rollout_n": ignore("set from the rollout's n"),
}


def translate_key(key: str, value: Any, given: dict[str, Any], rlpost_keys: set[str]) -> Outcome:
    """One key (verl's or rlpost's) -> what rlpost does with it. A key under a prefix rule (e.g. everything in
    `...fsdp_config`) follows that rule; `given` holds every key's value (rlpost's defaults under the keys given)."""
    parts = key.split(".")
    rule = rule_for(key)
    if rule is not None:
        try:
            return rule(value, given)
        except (TypeError, ValueError, AttributeError) as e:
            return Outcome(refused=f"cannot be read ({type(e).__name__}: {e}); check its type")
    if key not in rlpost_keys and any(k.startswith(parts[0] + ".") for k in rlpost_keys):
        hints = sorted({f"'{target}' (verl's {verl_key})" for verl_key, target in renames().items()
                        if verl_key.endswith("." + parts[-1]) and target.startswith(parts[0] + ".")})
        if hints:  # a verl key's last part under an rlpost section, e.g. actor.ppo_micro_batch_size_per_gpu
            return Outcome(refused=f"is not an rlpost key; did you mean {' or '.join(hints)}?")
    if key in rlpost_keys or any(k.startswith(parts[0] + ".") for k in rlpost_keys):
        return Outcome({key: value})  # rlpost's sections check their own keys, naming the closest
    return Outcome(refused=f"is neither an rlpost key nor a verl key rlpost knows"
                           f"{did_you_mean(key, [*RULES, *rlpost_keys])}")


def is_verl_key(key: str, rlpost_keys: set[str]) -> bool:
    """A key only verl has (it is not also an rlpost setting or section): a sign the command line is verl's."""
    return key not in rlpost_keys and rule_for(key) is not None


def rule_for(key: str) -> Rule | None:
    """The rule of the key or of its closest enclosing prefix (everything in `...fsdp_config` follows that one)."""
    parts = key.split(".")
    return next((RULES[p] for p in (".".join(parts[:n]) for n in range(len(parts), 0, -1)) if p in RULES), None)


def rlpost_leaves(cls: type, prefix: str = "") -> set[str]:
    """Every setting's dotted path in the schema (dict-valued settings, e.g. reward.kwargs, are leaves)."""
    import typing

    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out |= rlpost_leaves(hints[f.name], path + ".")
        else:
            out.add(path)
    return out


def flatten(tree: dict, known: set[str], prefix: str = "") -> dict[str, Any]:
    """A nested config -> {dotted key: value}, stopping at keys that are settings themselves (their values may be
    mappings: reward.kwargs, a prefix rule such as ...fsdp_config) unless a more specific key lies below them
    (...policy_loss.loss_mode under ...policy_loss)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and (path not in known or _has_keys_below(path, known)):
            out |= flatten(value, known, path + ".")
        else:
            out[path] = value
    return out


def _has_keys_below(path: str, known: set[str]) -> bool:
    return any(k.startswith(path + ".") for k in known)


@dataclass
class Translation:
    settings: list[tuple[str, str, Any]] = field(default_factory=list)  # (source, rlpost key, value)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (key, what runs instead)
    refused: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The ignored keys and notes, one per line, for start-up logs and `rlpost config`."""
        lines = [f"  {key}: ignored: {why}" for key, why in self.ignored]
        return "\n".join(lines + [f"  {key}: {what}" for key, what in self.notes])


def translate(entries: Iterable[tuple[str, str, Any]], rlpost_keys: set[str], defaults: dict[str, Any]
              ) -> Translation:
    """(source, key, value) in the order given (later ones win) -> rlpost settings with their sources. `defaults`:
    rlpost's, flat, which rules compare with when a key they read is not given."""
    entries = list(entries)
    given = {**defaults, **{key: value for _, key, value in entries}}
    out = Translation()
    for source, key, value in entries:
        outcome = _reset(key, given, rlpost_keys) if value is DELETE else translate_key(key, value, given,
                                                                                         rlpost_keys)
        if outcome.refused:
            out.refused.append(f"{key} = {value!r} (from {source}): {outcome.refused}")
        if outcome.ignored:
            out.ignored.append((key, outcome.ignored))
        if outcome.note:
            out.notes.append((key, outcome.note))
        label = source if source.startswith("override") or target_is_key(outcome, key) else f"{source} ({key})"
        out.settings += [(label, target, v) for target, v in outcome.settings.items()]
    return out


def target_is_key(outcome: Outcome, key: str) -> bool:
    return list(outcome.settings) == [key]


def _reset(key: str, given: dict[str, Any], known: set[str]) -> Outcome:
    """`~key`: the settings the key would set go back to their defaults."""
    outcome = translate_key(key, _Probe(), given, known)
    if outcome.refused or any(not isinstance(v, _Probe) for v in outcome.settings.values()):
        return Outcome(refused="cannot be reset with ~ (its value is converted); set it instead")
    return dataclasses.replace(outcome, settings=dict.fromkeys(outcome.settings, DELETE))


def is_verl_experiment(body: dict) -> bool:
    """A YAML in verl's layout: it extends verl's trainer config, or has Hydra's settings. (An rlpost recipe may
    hold verl keys too; they are translated like any other.)"""
    defaults = body.get("defaults") or []
    names = [d for d in defaults if isinstance(d, str)] if isinstance(defaults, list) else []
    return any(n in VERL_BASES or n == "_self_" for n in names) or "hydra" in body


def experiment_body(path: Path, body: dict) -> dict:
    """An experiment YAML's own keys: its defaults may name verl's trainer configs and _self_ (the keys of the
    file itself, merged over rlpost's defaults); anything else they compose is refused, naming it."""
    from rlpost.config.loader import ConfigError

    body = dict(body)
    defaults = body.pop("defaults", []) or []
    for entry in defaults:
        if entry == "_self_" or entry in VERL_BASES:
            continue
        raise ConfigError([f"{path}: defaults entry {entry!r} is not supported: an experiment YAML may extend "
                           f"{' or '.join(VERL_BASES)} (rlpost's defaults stand in for them) and list _self_"])
    return body


def resolve_interpolations(entries: list[tuple[str, str, Any]], defaults: dict) -> list[tuple[str, str, Any]]:
    """`${a.b}` and `${oc.env:X}` in the values given, resolved as Hydra does: against the whole config, every key
    given (the last value of each) over rlpost's defaults, under verl's names too (so `${actor_rollout_ref.rollout.n}`
    finds rollout.sampling.n)."""
    if not any(_interpolated(value) for _, _, value in entries):
        return entries
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from rlpost.config.loader import ConfigError

    base = OmegaConf.create(defaults)
    conf = OmegaConf.create(defaults)
    for _, key, value in entries:
        value = OmegaConf.select(base, key, default=None) if value is DELETE else value
        OmegaConf.update(conf, key, value, force_add=True, merge=False)
    out, problems = [], []
    for source, key, value in entries:
        if _interpolated(value):
            try:
                value = OmegaConf.select(conf, key, throw_on_resolution_failure=True)
                value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            except OmegaConfBaseException as e:
                problems.append(f"{key} (from {source}): cannot resolve {_first_line(e)}")
        out.append((source, key, value))
    if problems:
        raise ConfigError(problems)
    return out


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0]


def _interpolated(tree: Any) -> bool:
    if isinstance(tree, dict):
        return any(_interpolated(v) for v in tree.values())
    if isinstance(tree, list):
        return any(_interpolated(v) for v in tree)
    return isinstance(tree, str) and "${" in tree


def verl_names(rlpost_defaults: dict[str, Any]) -> dict:
    """rlpost's defaults as a nested tree under rlpost's names and, where a verl key is a plain rename of one,
    under the verl name too: what interpolations resolve against."""
    tree: dict = {}

    def put(path: str, value: Any) -> None:
        node = tree
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                return
        node.setdefault(last, value)

    for key, value in rlpost_defaults.items():
        put(key, value)
    for key, target in renames().items():
        if target in rlpost_defaults:
            put(key, rlpost_defaults[target])
    return tree


@functools.cache
def renames() -> dict[str, str]:
    """{verl key: rlpost key} for the rules that only rename (probed with a value that a conversion would reject)."""
    out = {}
    for key, rule in RULES.items():
        try:
            outcome = rule(_Probe(), {})
        except Exception:  # rules that compute from their value cannot be probed; they are not renames
            continue
        targets = [target for target, v in outcome.settings.items() if isinstance(v, _Probe)]
        if len(targets) == 1:
            out[key] = targets[0]
    return out


class _Probe:
    """A value that a plain rename passes through untouched (how verl_names finds renames)."""

    def __lt__(self, other: Any) -> bool:
        raise TypeError("not a rename")

    __gt__ = __le__ = __ge__ = __lt__


def experiment_file(config_path: str | None, config_name: str | None) -> Path | None:
    """Hydra's --config-path/--config-name -> the experiment YAML (a name may omit .yaml); None for verl's own
    trainer configs (`--config-name=ppo_megatron_trainer.yaml` in verl's scripts), which rlpost's defaults stand in
    for."""
    if config_name is None:
        return None
    from rlpost.config.loader import ConfigError

    file = Path(config_path or ".") / config_name
    if file.suffix not in (".yaml", ".yml"):
        file = file.with_name(file.name + ".yaml")
    if file.stem in VERL_BASES and not file.is_file():
        return None
    if not file.is_file():
        raise ConfigError([f"--config-path {config_path!r} --config-name {config_name!r}: '{file}' does not exist"])
    return file
