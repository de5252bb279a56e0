"""A verl user's command lines read as rlpost configs: override lists of the shape of verl's example scripts (GSM8K
multi-turn with SGLang, megatron GRPO on math, Search-R1, geo3k multi-turn; written here, not copied) and their
experiment YAMLs (`defaults: [ppo_trainer, _self_]`), Hydra's `+key`, `~key`, lists and `${...}` interpolations,
the table of ignored keys, refusals with their reasons, `python -m rlpost.main_ppo`, and Hub ids from the local
Hugging Face cache."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlpost.cli import main
from rlpost.config import ConfigError
from rlpost.config.loader import load_config_explained

ROOT = Path(__file__).resolve().parents[1]

# the keys verl's example scripts share (FSDP actor, SGLang rollout), with the values they typically set
COMMON = [
    "algorithm.adv_estimator=grpo", "data.train_batch_size=256", "data.max_prompt_length=1024",
    "data.max_response_length=1024", "data.filter_overlong_prompts=True", "data.truncation=error",
    "data.return_raw_chat=True", "actor_rollout_ref.model.path=Qwen/Qwen2.5-3B-Instruct",
    "actor_rollout_ref.actor.optim.lr=1e-6", "actor_rollout_ref.model.use_remove_padding=True",
    "actor_rollout_ref.actor.ppo_mini_batch_size=256", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=32",
    "actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_coef=0.001",
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl", "actor_rollout_ref.actor.entropy_coeff=0",
    "actor_rollout_ref.model.enable_gradient_checkpointing=True",
    "actor_rollout_ref.actor.fsdp_config.param_offload=False",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=False",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=2", "actor_rollout_ref.rollout.name=sglang",
    "actor_rollout_ref.rollout.gpu_memory_utilization=0.5", "actor_rollout_ref.rollout.n=16",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32",
    "actor_rollout_ref.ref.fsdp_config.param_offload=True",
    "algorithm.use_kl_in_reward=False", "trainer.critic_warmup=0", 'trainer.logger=["console","wandb"]',
    "trainer.project_name=verl_users", "trainer.n_gpus_per_node=8", "trainer.nnodes=1", "trainer.save_freq=-1",
    "trainer.test_freq=20", "trainer.total_epochs=15",
]


# a chat template that writes tool schemas (verl's geo3k YAML brings a longer one for Qwen2.5-VL)
TOOLS_TEMPLATE = ("{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
                  "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def experiment(tmp_path: Path, name: str, body: dict) -> list[str]:
    """An experiment YAML in verl's layout, and the Hydra flags that name it."""
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({
        "hydra": {"searchpath": ["file://verl/trainer/config"]}, "defaults": ["ppo_trainer", "_self_"], **body}))
    return [f"--config-path={tmp_path}", f"--config-name={name}"]


def translated(*argv: str):
    """What `rlpost train ARGV` would run: the config and the translation, without checking files."""
    from rlpost.cli import _recipe_and_overrides, build_parser

    args = build_parser().parse_args(["config", *argv])
    recipe, overrides = _recipe_and_overrides(args)
    return load_config_explained(recipe, overrides, check_files=False)


def ignored(translation) -> dict[str, str]:
    return dict(translation.ignored)


def test_gsm8k_multiturn_with_sglang(tmp_path):
    flags = experiment(tmp_path, "gsm8k_multiturn_grpo", {
        "data": {"max_prompt_length": 1024, "max_response_length": 1024, "train_batch_size": 256,
                 "return_raw_chat": True},
        "actor_rollout_ref": {"hybrid_engine": True, "rollout": {
            "name": "sglang", "multi_turn": {"enable": True, "max_assistant_turns": 5}}}})
    cfg, t = translated(*flags, *COMMON, "trainer.experiment_name=qwen2.5-3b_gsm8k-sgl-multi-w-tool",
                        "data.train_files=/data/gsm8k/train.parquet", "data.val_files=/data/gsm8k/test.parquet",
                        "actor_rollout_ref.rollout.multi_turn.tool_config_path=/verl/gsm8k_tool_config.yaml",
                        "actor_rollout_ref.rollout.multi_stage_wake_up=True", "actor_rollout_ref.rollout.mode=async",
                        "actor_rollout_ref.rollout.over_sample_rate=0.1", "global_profiler.tool=torch_memory",
                        "global_profiler.save_path=./mem_snapshots", "trainer.val_before_train=True",
                        "global_profiler.global_tool_config.torch_memory.trace_alloc_max_entries=100000",
                        "global_profiler.global_tool_config.torch_memory.stack_depth=32")
    assert cfg.actor.model_path == "Qwen/Qwen2.5-3B-Instruct" and cfg.actor.optim.lr == 1e-6
    assert (cfg.actor.ppo_mini_batch_size, cfg.actor.micro_batch_size, cfg.ref.micro_batch_size) == (256, 32, 32)
    assert cfg.actor.use_kl_loss and cfg.actor.kl_loss_coef == 0.001 and cfg.actor.kl_loss_type == "low_var_kl"
    assert cfg.rollout.sampling.n == 16 and cfg.rollout.infer_tp == 2 and cfg.rollout.mem_fraction == 0.5
    mt = cfg.rollout.multi_turn
    assert mt.enable and mt.max_assistant_turns == 5 and mt.tool_config_path == "/verl/gsm8k_tool_config.yaml"
    assert (cfg.cluster.n_nodes, cfg.cluster.n_gpus_per_node) == (1, 8)
    assert cfg.trainer.save_every == -1 and cfg.trainer.val_every == 20 and cfg.trainer.total_epochs == 15
    assert cfg.trainer.logger == ["console", "wandb"] and cfg.data.train_files == ["/data/gsm8k/train.parquet"]
    # colocated, as verl's hybrid engine: the embedded engine, said at start-up
    assert cfg.rollout.engine == "embedded" and cfg.cluster.placement == "colocated"
    assert "embedded engine" in dict(t.notes)["actor_rollout_ref.rollout.name"]
    why = ignored(t)
    assert why["actor_rollout_ref.actor.fsdp_config"] == "rlpost trains with megatron-core, not FSDP"
    assert "packs" in why["actor_rollout_ref.model.use_remove_padding"]
    assert "not built" in why["actor_rollout_ref.model.enable_gradient_checkpointing"]
    assert {"data.return_raw_chat", "hydra", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
            "trainer.critic_warmup", "actor_rollout_ref.hybrid_engine"} <= set(why)


def test_megatron_grpo_on_math_with_verls_own_trainer_config():
    cfg, t = translated(
        "--config-path=config", "--config-name=ppo_megatron_trainer.yaml", *COMMON,
        "data.train_files=['/data/gsm8k/train.parquet', '/data/math/train.parquet']",
        "actor_rollout_ref.model.path=Qwen/Qwen2-7B-Instruct", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=2",
        "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2",
        "actor_rollout_ref.ref.megatron.pipeline_model_parallel_size=2",
        "actor_rollout_ref.ref.megatron.tensor_model_parallel_size=2", "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.n=5", "data.train_batch_size=1024", "trainer.save_freq=20", "trainer.test_freq=5",
        "trainer.experiment_name=qwen2_7b_megatron", "actor_rollout_ref.model.use_fused_kernels=True",
        "actor_rollout_ref.rollout.mode=async")
    assert (cfg.actor.tp, cfg.actor.pp, cfg.actor.micro_batch_size) == (2, 2, 4)
    assert cfg.data.train_files == ["/data/gsm8k/train.parquet", "/data/math/train.parquet"]
    assert cfg.trainer.save_every == 20 and cfg.trainer.val_every == 5 and cfg.rollout.sampling.n == 5
    assert "vllm" in dict(t.notes)["actor_rollout_ref.rollout.name"]
    assert "actor's layout" in ignored(t)["actor_rollout_ref.ref.megatron"]


def test_search_r1_with_dynamic_batches_and_a_warmup_ratio(tmp_path):
    flags = experiment(tmp_path, "search_multiturn_grpo", {
        "data": {"max_prompt_length": 4096, "max_response_length": 3000, "train_batch_size": 512,
                 "return_raw_chat": True, "shuffle": False},
        "actor_rollout_ref": {"hybrid_engine": True, "rollout": {"name": "sglang", "multi_turn": {
            "enable": True, "max_assistant_turns": 2, "format": "qwen"}}}})
    cfg, t = translated(*flags, *COMMON, "data.max_prompt_length=4096", "data.max_response_length=3000",
                        "data.train_batch_size=512", "data.val_batch_size=256",
                        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.285",
                        "actor_rollout_ref.actor.use_dynamic_bsz=True",
                        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384",
                        "actor_rollout_ref.rollout.max_model_len=15000", "actor_rollout_ref.rollout.n=5",
                        "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=2", "trainer.val_before_train=False",
                        "actor_rollout_ref.rollout.multi_turn.tool_config_path=/verl/search_tool_config.yaml")
    assert cfg.actor.optim.lr_warmup_steps_ratio == 0.285 and cfg.actor.optim.lr_warmup_steps == 0
    assert cfg.actor.max_tokens_per_micro_batch == 16384 and cfg.data.val_batch_size == 256
    assert cfg.data.max_response_length == 3000 and cfg.data.shuffle is False and not cfg.trainer.val_before_train
    assert cfg.rollout.multi_turn.max_assistant_turns == 2 and cfg.rollout.multi_turn.format == "hermes"
    assert "max_prompt_length" in ignored(t)["actor_rollout_ref.rollout.max_model_len"]
    assert "hermes" in dict(t.notes)["actor_rollout_ref.rollout.multi_turn.format"]  # older verl's SGLang parser name


def test_geo3k_multiturn_with_a_vision_model(tmp_path):
    flags = experiment(tmp_path, "geo3k_multiturn_grpo", {
        "data": {"max_prompt_length": 2048, "max_response_length": 2048, "train_batch_size": 256,
                 "return_raw_chat": True},
        "actor_rollout_ref": {"hybrid_engine": True, "model": {"custom_chat_template": TOOLS_TEMPLATE}, "rollout": {
            "name": "sglang", "multi_turn": {"enable": True, "max_assistant_turns": 5}}}})
    cfg, _ = translated(*flags, *COMMON, "actor_rollout_ref.model.path=Qwen/Qwen2.5-VL-3B-Instruct",
                        "data.max_prompt_length=2048", "data.max_response_length=2048",
                        "data.train_files=/data/geo3k_multiturn_w_tool/train.parquet",
                        "actor_rollout_ref.rollout.multi_turn.tool_config_path=/verl/geo3k_tool_config.yaml",
                        "+actor_rollout_ref.actor.freeze_vision_tower=True",
                        # the 4-GPU variant's token budgets, which do nothing without use_dynamic_bsz
                        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=8192",
                        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=8192",
                        "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=8192",
                        "critic.ppo_max_token_len_per_gpu=8192", "critic.forward_max_token_len_per_gpu=8192")
    assert cfg.actor.model_path == "Qwen/Qwen2.5-VL-3B-Instruct" and cfg.actor.freeze_vision_tower
    assert cfg.actor.max_tokens_per_micro_batch is None and cfg.ref.max_tokens_per_micro_batch is None
    assert cfg.data.max_prompt_length == 2048 and cfg.rollout.multi_turn.enable
    assert cfg.actor.chat_template == TOOLS_TEMPLATE  # verl's geo3k YAML brings a template that writes tool schemas


def test_a_custom_chat_template_replaces_the_tokenizers(tmp_path):
    from rlpost.models.hf import load_tokenizer
    from rlpost.rollout.chat import renders_tools
    from rlpost.testing.tiny_models import make_tiny_vl_checkpoint

    model = make_tiny_vl_checkpoint(tmp_path / "vl")
    tools = [{"type": "function", "function": {"name": "calc_geo3k_reward", "description": "",
                                               "parameters": {"type": "object", "properties": {}}}}]
    tokenizer = load_tokenizer(model, TOOLS_TEMPLATE)
    assert renders_tools(tokenizer, tools) and "calc_geo3k_reward" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=tools, tokenize=False)


def test_hydra_syntax_and_interpolations(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    cfg, t = translated(
        "+actor_rollout_ref.rollout.val_kwargs.n=4", "actor_rollout_ref.rollout.val_kwargs.temperature=0.6",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=True", "++trainer.total_training_steps=7",
        "data.max_response_length=${data.max_prompt_length}", "data.max_prompt_length=300",
        "actor_rollout_ref.rollout.response_length=${data.max_response_length}",
        "trainer.output_dir=${oc.env:RUNS}", "actor_rollout_ref.actor.clip_ratio=0.25",
        "actor_rollout_ref.actor.clip_ratio_high=0.28", "data.val_max_samples=-1", "trainer.resume_mode=disable",
        "actor_rollout_ref.rollout.n=3", "~actor_rollout_ref.rollout.n", "custom_reward_function.path=/r/mine.py",
        "custom_reward_function.name=score_it", "+custom_reward_function.reward_kwargs.method=flexible",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=-1")
    assert cfg.rollout.val_sampling.n == 4 and cfg.rollout.val_sampling.temperature == 0.6
    assert cfg.trainer.total_training_steps == 7 and cfg.trainer.output_dir == str(tmp_path / "runs")
    assert cfg.data.max_prompt_length == 300 and cfg.data.max_response_length == 300  # resolved after all keys
    # as in verl, clip_ratio alone changes nothing: clip_ratio_low/high (0.2 unless set) win
    assert (cfg.actor.clip_ratio_low, cfg.actor.clip_ratio_high) == (0.2, 0.28)
    assert "take precedence" in ignored(t)["actor_rollout_ref.actor.clip_ratio"]
    assert cfg.data.val_max_samples is None and cfg.trainer.resume == "disable"
    assert cfg.rollout.sampling.n == 1  # ~key: back to the default, verl's on a verl command line
    assert cfg.reward.custom_function == "/r/mine.py:score_it" and cfg.reward.kwargs == {"method": "flexible"}
    assert cfg.actor.optim.lr_warmup_steps == 0
    dapo, dapo_t = translated("algorithm.filter_groups.enable=True", "+algorithm.filter_groups.metric=seq_reward",
                         "+data.gen_batch_size=16", "data.train_batch_size=16",
                         "actor_rollout_ref.actor.ppo_mini_batch_size=16",
                         "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                         "critic.ppo_micro_batch_size_per_gpu=2",
                         "+reward_model.reward_kwargs.overlong_buffer_cfg.enable=True",
                         "+reward_model.reward_kwargs.overlong_buffer_cfg.len=128",
                         "+reward_model.reward_kwargs.max_resp_len=${data.max_response_length}")
    assert dapo.algorithm.filter_groups.metric == "score" and dapo.reward.overlong_buffer.enable
    assert dapo.data.gen_batch_size == 16
    assert dapo.reward.overlong_buffer.len == 128 and "sequence's score" in dict(dapo_t.notes)[
        "algorithm.filter_groups.metric"]
    # verl's agent loop reads val_kwargs.temperature, not do_sample (0, the default, is greedy)
    assert "does not read it" in ignored(t)["actor_rollout_ref.rollout.val_kwargs.do_sample"]
    with pytest.raises(ConfigError, match=r"data.max_response_length \(from override 'data.max_response_length="
                                          r"\$\{data.max_promt_length\}'\): cannot resolve"):
        translated("data.max_response_length=${data.max_promt_length}")
    resumed, _ = translated("trainer.resume_mode=resume_path", "trainer.resume_from_path=/ck/global_step_20")
    assert resumed.trainer.resume == "/ck/global_step_20"


@pytest.mark.parametrize("override, reason", [
    ("actor_rollout_ref.model.lora_rank=32", "LoRA is not built"),
    ("reward_model.enable=True", "model-based rewards are not built"),
    ("actor_rollout_ref.rollout.response_length=2048", "must equal data.max_response_length (512)"),
    ("actor_rollout_ref.rollout.name=trtllm", "must be sglang, vllm or hf"),
    ("actor_rollout_ref.actor.megatron.context_parallel_size=2", "context parallelism is not built"),
    ("trainer.critic_warmup=5", "critic warm-up steps are not built"),
    ("actor_rollout_ref.rollout.multi_turn.max_assistant_turn=3",
     "did you mean 'actor_rollout_ref.rollout.multi_turn.max_assistant_turns'"),
    ("actor_rollout_ref.actor.use_dynamic_bsz=True", "needs actor_rollout_ref.actor.ppo_max_token_len_per_gpu"),
    ("trainer.resume_mode=resume_path", "needs trainer.resume_from_path"),
    ("+data.gen_batch_size=3072", "only dynamic sampling (algorithm.filter_groups.enable) reconciles"),
    ("actor.ppo_micro_batch_size_per_gpu=4", "is not an rlpost key; did you mean 'actor.micro_batch_size' (verl's "
                                             "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu)?"),
    ("rollout.tensor_model_parallel_size=2", "did you mean 'rollout.infer_tp' (verl's "
                                             "actor_rollout_ref.rollout.tensor_model_parallel_size)?"),
])
def test_keys_that_would_change_results_are_refused_with_their_reason(override, reason):
    with pytest.raises(ConfigError) as e:
        translated(override)
    assert reason in str(e.value) and override.split("=")[0].lstrip("+") in str(e.value)


def test_config_from_verl_prints_the_config_and_the_ignored_keys(tmp_path, capsys):
    assert main(["config", "--no-check-files", "--from-verl", *COMMON]) == 0
    out = capsys.readouterr().out
    config = yaml.safe_load(out)
    assert config["actor"]["model_path"] == "Qwen/Qwen2.5-3B-Instruct" and config["rollout"]["sampling"]["n"] == 16
    assert "#  actor_rollout_ref.actor.fsdp_config: ignored: rlpost trains with megatron-core, not FSDP" in out


def test_python_m_rlpost_main_ppo_reads_verls_command_line(tmp_path):
    """The entry point shaped like verl's: its start-up refuses a key with its reason, before any work."""
    out = subprocess.run([sys.executable, "-m", "rlpost.main_ppo", "actor_rollout_ref.model.lora_rank=8",
                          f"trainer.output_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "actor_rollout_ref.model.lora_rank = 8 (from override 'actor_rollout_ref.model.lora_rank=8'): LoRA is " \
           "not built" in out.stderr


def test_hub_ids_resolve_through_the_local_hugging_face_cache(tmp_path):
    """Qwen/... as verl's scripts name models: found in HF_HUB_CACHE's layout, never downloaded."""
    from rlpost.testing.tiny_models import make_tiny_checkpoint

    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-qwen" / "snapshots" / ("a" * 40)
    make_tiny_checkpoint("qwen2", snapshot)
    (cache / "models--tiny-org--tiny-qwen" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-qwen" / "refs" / "main").write_text("a" * 40)
    code = ("from rlpost.models.hf import model_dims, resolve_model_path\n"
            "print(resolve_model_path('tiny-org/tiny-qwen'))\nprint(model_dims('tiny-org/tiny-qwen')['model_type'])\n"
            "try:\n    resolve_model_path('tiny-org/absent')\nexcept FileNotFoundError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stderr
    assert lines[0] == str(snapshot) and lines[1] == "qwen2"
    assert f"'tiny-org/absent' is not in the local Hugging Face cache '{cache}'" in lines[2]


def test_a_verl_command_line_starts_from_verls_defaults_and_an_rlpost_recipe_from_rlposts():
    cfg, t = translated("actor_rollout_ref.model.path=m", "actor_rollout_ref.actor.ppo_mini_batch_size=64",
                        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
                        "critic.ppo_micro_batch_size_per_gpu=4",
                        "data.train_batch_size=256")
    assert cfg.algorithm.adv_estimator == "gae" and cfg.rollout.sampling.n == 1 and cfg.trainer.total_epochs == 30
    assert cfg.trainer.save_every == -1 and cfg.trainer.val_every == 0 and not cfg.data.filter_overlong_prompts
    assert cfg.critic.ppo_mini_batch_size == 64  # verl's critic follows the actor's mini-batch
    assert (cfg.rollout.infer_tp, cfg.cluster.n_gpus_per_node) == (2, 8)
    assert "configs/verl/defaults.yaml" in dict(t.notes)["defaults"]
    recipe = ROOT / "recipes" / "arithmetic" / "quickstart.yaml"
    mixed, t = translated(str(recipe), "trainer.save_freq=5")
    plain, _ = translated(str(recipe))
    assert mixed.trainer.save_every == 5 and "defaults" not in dict(t.notes)
    assert mixed.algorithm == plain.algorithm and mixed.rollout == plain.rollout and mixed.data == plain.data


def test_what_a_review_found():
    """Specific keys under a prefix rule, a later value winning, verl's own default values, strings where numbers
    go, ~ on a mapping and inside interpolations."""
    cfg, _ = translated("actor_rollout_ref.actor.policy_loss.loss_mode=gspo",
                        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
                        "actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes=1024",
                        "actor_rollout_ref.actor.use_dynamic_bsz=True",
                        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096",
                        "actor_rollout_ref.actor.use_dynamic_bsz=False",
                        "actor_rollout_ref.actor.optim.warmup_style=null",
                        "+algorithm.rollout_correction={rollout_is: null, rollout_is_threshold: 2.0, rollout_rs: null}",
                        "reward.kwargs={method: flexible}", "~reward.kwargs", "data.max_prompt_length=100",
                        "~data.max_prompt_length", "data.max_response_length=${data.max_prompt_length}",
                        "actor_rollout_ref.rollout.name=sglang", "rollout.n_gpus_per_node=4")
    assert cfg.actor.policy_loss == "gspo" and cfg.rollout.update_weights_bucket_mb == 1024
    assert cfg.actor.max_tokens_per_micro_batch is None and cfg.reward.kwargs == {}
    assert cfg.data.max_prompt_length == cfg.data.max_response_length == 512
    assert cfg.rollout.engine == "sglang" and (cfg.cluster.placement, cfg.cluster.rollout_n_gpus) == ("split", 4)
    for override, reason in [("actor_rollout_ref.model.lora.rank=32", "LoRA is not built"),
                             ("trainer.test_freq=five", "cannot be read"),
                             ("~actor_rollout_ref.rollout.name", "cannot be reset with ~")]:
        with pytest.raises(ConfigError, match=reason):
            translated(override)
    nested = {"actor_rollout_ref": {"actor": {"policy_loss": {"loss_mode": "gspo", "clip_cov_ratio": 0.0002}}}}
    from rlpost.config.verl import flatten

    assert flatten(nested, {"actor_rollout_ref.actor.policy_loss", "actor_rollout_ref.actor.policy_loss.loss_mode"}) \
        == {"actor_rollout_ref.actor.policy_loss.loss_mode": "gspo",
            "actor_rollout_ref.actor.policy_loss.clip_cov_ratio": 0.0002}
