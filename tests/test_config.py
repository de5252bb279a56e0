import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from rlpost.cli import main
from rlpost.config import ConfigError, config_to_dict, load_config, run_dir, save_config
from rlpost.config.loader import CONFIG_DIR, parse_override
from rlpost.config.schema import RLConfig

QUICKSTART = "recipes/gsm8k/quickstart.yaml"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


def load(*overrides, recipe=QUICKSTART, **kw):
    kw.setdefault("check_files", False)
    return load_config(recipe, list(overrides), **kw)


def problems(*overrides, **kw):
    with pytest.raises(ConfigError) as e:
        load(*overrides, **kw)
    return e.value.problems


def test_every_schema_field_has_one_default_in_configs():
    cfg = load_config(None, check_files=False)
    assert isinstance(cfg, RLConfig)
    for section in dataclasses.fields(RLConfig):
        assert (CONFIG_DIR / f"{section.name}.yaml").is_file()


def test_recipe_layers_over_defaults():
    cfg = load()
    assert cfg.data.train_batch_size == 8 and cfg.data.max_prompt_length == 256
    assert cfg.actor.optim.lr == 5e-5 and cfg.actor.optim.betas == [0.9, 0.999]  # untouched keys keep defaults
    assert cfg.trainer.experiment_name == "gsm8k-quickstart"


@pytest.mark.parametrize("text,path,value", [
    ("actor.optim.lr=1e-5", ("actor", "optim", "lr"), "1e-5"),  # YAML 1.1 reads this as a string
    ("data.train_batch_size=32", ("data", "train_batch_size"), 32),
    ("data.shuffle=false", ("data", "shuffle"), False),
    ("data.val_batch_size=null", ("data", "val_batch_size"), None),
    ("trainer.logger=[console,jsonl]", ("trainer", "logger"), ["console", "jsonl"]),
    ("trainer.experiment_name=run 1", ("trainer", "experiment_name"), "run 1"),
])
def test_parse_override(text, path, value):
    assert parse_override(text) == (path, value)


def test_overrides_are_coerced_to_field_types():
    cfg = load("actor.optim.lr=1e-5", "data.train_batch_size=32", "data.shuffle=false", "data.val_batch_size=null",
               "trainer.logger=[console]", "trainer.experiment_name=2024", "actor.clip_ratio_high=1",
               "data.train_files=other.parquet", "actor.ppo_mini_batch_size=16")
    assert cfg.actor.optim.lr == 1e-5 and isinstance(cfg.actor.optim.lr, float)
    assert cfg.data.train_batch_size == 32 and cfg.data.shuffle is False and cfg.data.val_batch_size is None
    assert cfg.trainer.logger == ["console"] and cfg.trainer.experiment_name == "2024"
    assert cfg.actor.clip_ratio_high == 1.0 and isinstance(cfg.actor.clip_ratio_high, float)
    assert cfg.data.train_files == ["other.parquet"]


def test_unknown_keys_name_key_section_source_and_closest():
    assert problems("actor.optim.lrr=1") == [
        "unknown key 'actor.optim.lrr' in section 'actor.optim' (from override 'actor.optim.lrr=1') "
        "(did you mean 'lr'?)"]
    assert problems("acotr.tp=2") == ["acotr.tp = 2 (from override 'acotr.tp=2'): is neither an rlpost key nor a "
                                      "verl key rlpost knows (did you mean 'actor.tp'?)"]


def test_unknown_key_in_recipe_file_names_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rollout:\n  sampling:\n    temprature: 0.7\n")
    assert problems(recipe=recipe) == [
        f"unknown key 'rollout.sampling.temprature' in section 'rollout.sampling' (from {recipe}) "
        "(did you mean 'temperature'?)"]


def test_wrong_types_and_ranges_all_reported_at_once():
    found = problems("data.train_batch_size=-1", "actor.clip_ratio_low=1.5", "actor.tp=two", "data.shuffle=1",
                     "actor.optim.lr=fast", "data.truncation=rigth", "algorithm.adv_estimator=grpp",
                     "rollout.sampling.top_p=0")
    assert found == [
        "data.train_batch_size = -1 (from override 'data.train_batch_size=-1'): expected a value >= 1",
        "data.shuffle = 1 (from override 'data.shuffle=1'): expected true or false",
        "data.truncation = 'rigth' (from override 'data.truncation=rigth'): expected one of 'error', 'left', 'right', "
        "'middle' (did you mean 'right'?)",
        "actor.tp = 'two' (from override 'actor.tp=two'): expected an integer",
        "actor.optim.lr = 'fast' (from override 'actor.optim.lr=fast'): expected a number",
        "actor.clip_ratio_low = 1.5 (from override 'actor.clip_ratio_low=1.5'): expected a value <= 1.0",
        "rollout.sampling.top_p = 0.0 (from override 'rollout.sampling.top_p=0'): expected a value > 0.0",
        "algorithm.adv_estimator = 'grpp' (from override 'algorithm.adv_estimator=grpp'): expected one of gae, grpo, "
        "reinforce_plus_plus, reinforce_plus_plus_baseline, remax, rloo (did you mean 'grpo'?)",
    ]


def test_malformed_override():
    assert problems("actor.tp") == ["override 'actor.tp' is not of the form section.key=value"]
    assert problems("actor..tp=1") == ["override 'actor..tp=1' is not of the form section.key=value"]


def test_cross_field_checks():
    assert problems("actor.tp=2") == ["actor.tp * actor.pp = 2 does not divide the 1 training devices"]
    assert problems("actor.ppo_mini_batch_size=3") == [
        "actor.ppo_mini_batch_size = 3 must divide data.train_batch_size = 8",
        "actor.micro_batch_size = 8 must divide the 12 samples each data-parallel rank gets per mini-batch"]
    assert problems("cluster.n_gpus_per_node=3") == [
        "actor.ppo_mini_batch_size * rollout.sampling.n = 32 samples do not split evenly over data-parallel size 3"]
    assert problems("actor.micro_batch_size=3") == [
        "actor.micro_batch_size = 3 must divide the 32 samples each data-parallel rank gets per mini-batch"]
    assert problems("actor.max_tokens_per_micro_batch=100") == [
        "actor.max_tokens_per_micro_batch = 100 cannot hold one sample of data.max_prompt_length + "
        "data.max_response_length = 448 tokens"]
    assert problems("rollout.sampling.n=1") == [
        "rollout.sampling.n = 1: algorithm.adv_estimator=grpo compares samples of the same prompt and needs n >= 2"]
    assert problems("cluster.placement=split") == [
        "cluster.rollout_n_gpus = 0: placement=split needs between 1 and 0 rollout devices out of "
        "cluster.n_nodes * cluster.n_gpus_per_node = 1"]
    assert problems("cluster.n_gpus_per_node=4", "cluster.placement=split", "cluster.rollout_n_gpus=2",
                    "rollout.infer_tp=4") == ["rollout.infer_tp = 4 does not divide the 2 rollout devices"]
    assert problems("rollout.multi_turn.enable=true") == [
        "rollout.multi_turn.enable = true needs rollout.multi_turn.tool_config_path or "
        "rollout.multi_turn.interaction_config_path"]
    assert problems("rollout.multi_turn.enable=true", "rollout.multi_turn.interaction_config_path=x.yaml",
                    "data.filter_overlong_prompts=false", "data.truncation=left") == [
        "data.truncation = left does not apply to multi-turn prompts, which are rendered from their messages: set "
        "data.filter_overlong_prompts = true or data.truncation = error"]
    # the critic is only checked when an estimator needs it
    load("critic.tp=2")
    assert problems("critic.tp=2", "algorithm.adv_estimator=gae") == [
        "critic.tp * critic.pp = 2 does not divide the 1 training devices"]


def test_sglang_with_colocated_placement_is_refused_with_the_reason():
    """The colocated hybrid engine is embedded-only; before, this combination silently ran the embedded engine."""
    [found] = problems("rollout.engine=sglang")
    assert found.startswith("rollout.engine = sglang runs with cluster.placement = split only")
    load("rollout.engine=sglang", "cluster.n_gpus_per_node=2", "cluster.placement=split", "cluster.rollout_n_gpus=1")


def test_gspo_cannot_be_aggregated_other_than_as_defined():
    """verl aggregates GSPO as seq-mean-token-mean whatever loss_agg_mode says; rlpost refuses the mismatch."""
    assert problems("actor.policy_loss=gspo") == [
        "actor.policy_loss = gspo is defined with actor.loss_agg_mode = seq-mean-token-mean (verl always aggregates "
        "it so), got token-mean; set actor.loss_agg_mode=seq-mean-token-mean or use the 'gspo' preset"]
    load("actor.policy_loss=gspo", "actor.loss_agg_mode=seq-mean-token-mean")


def test_every_loss_key_reaches_the_loss_settings():
    from rlpost.config.derived import policy_loss_settings, value_loss_settings

    cfg = load("actor.policy_loss=gspo", "actor.loss_agg_mode=seq-mean-token-mean", "actor.clip_ratio_low=0.1",
               "actor.clip_ratio_high=0.3", "actor.clip_ratio_c=4", "actor.entropy_coeff=0.01",
               "actor.use_kl_loss=true", "actor.kl_loss_coef=0.2", "actor.kl_loss_type=k2",
               "critic.cliprange_value=0.3", "critic.loss_agg_mode=seq-mean-token-sum-norm")
    s = policy_loss_settings(cfg)
    assert dataclasses.asdict(s) == {
        "policy_loss": "gspo", "loss_agg_mode": "seq-mean-token-mean", "clip_ratio_low": 0.1, "clip_ratio_high": 0.3,
        "clip_ratio_c": 4.0, "entropy_coeff": 0.01, "use_kl_loss": True, "kl_loss_coef": 0.2, "kl_loss_type": "k2",
        "loss_scale_factor": 192.0}  # Dr. GRPO's constant defaults to data.max_response_length
    actor_keys = {f.name for f in dataclasses.fields(cfg.actor)}
    assert set(dataclasses.asdict(s)) - {"loss_scale_factor"} <= actor_keys  # each setting is the actor key's value
    assert dataclasses.asdict(value_loss_settings(cfg)) == {
        "cliprange_value": 0.3, "loss_agg_mode": "seq-mean-token-sum-norm", "loss_scale_factor": 192.0}
    assert policy_loss_settings(load("actor.loss_scale_factor=100")).loss_scale_factor == 100.0


def test_tp_must_divide_heads(tmp_path, tiny_llama):
    data = tmp_path / "d.parquet"
    data.write_bytes(b"")
    found = problems(f"actor.model_path={tiny_llama}", "cluster.n_gpus_per_node=3", "actor.tp=3",
                     "actor.ppo_mini_batch_size=8", "rollout.sampling.n=3", "actor.micro_batch_size=8",
                     f"data.train_files=[{data}]", f"data.val_files=[{data}]", check_files=True)
    assert found == ["actor.tp = 3 must divide the model's 4 attention heads and 2 key/value heads"]
    found = problems(f"actor.model_path={tiny_llama}", "cluster.n_gpus_per_node=4", "actor.pp=4",
                     f"data.train_files=[{data}]", f"data.val_files=[{data}]", check_files=True)
    assert found == ["actor.pp = 4 must divide the model's 2 layers"]


def test_missing_files_and_models(tmp_path):
    found = problems("actor.model_path=no/such/model", "data.train_files=[nope.parquet]", "data.val_files=[]",
                     "reward.custom_function=fn.py", "trainer.resume=ckpt/none", check_files=True)
    assert found == [
        "data.train_files[0] = 'nope.parquet': file not found (run `rlpost preprocess` first?)",
        "reward.custom_function = 'fn.py': expected 'path/to/file.py:function_name'",
        "trainer.resume = 'ckpt/none': expected 'auto', 'disable' or an existing checkpoint path",
        "actor.model_path = 'no/such/model': model 'no/such/model' is neither a directory nor a known model asset; "
        "known assets: smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct, qwen2.5-coder-0.5b-vl",
    ]


def test_presets(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defaults: [dr_grpo]\nactor:\n  loss_agg_mode: token-mean\n")
    cfg = load(recipe=recipe)
    assert cfg.algorithm.norm_adv_by_std_in_grpo is False
    assert cfg.actor.loss_agg_mode == "token-mean"  # the recipe wins over its preset
    recipe.write_text("defaults: [dr_grpoo]\n")
    assert problems(recipe=recipe) == [
        f"{recipe}: defaults names preset 'dr_grpoo', which is not in configs/presets/ (did you mean 'dr_grpo'?); "
        "available: dr_grpo, gspo, ppo"]


def test_missing_default_is_a_clear_error(tmp_path):
    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    text = (config_dir / "ref.yaml").read_text().replace("micro_batch_size: 8\n", "")
    (config_dir / "ref.yaml").write_text(text)
    assert problems(config_dir=config_dir) == [
        "missing key 'ref.micro_batch_size': no default in configs/ and none given"]
    (config_dir / "ref.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="ref.yaml: expected a mapping at the top level, got list"):
        load(config_dir=config_dir)


def test_resolved_config_round_trips(tmp_path):
    cfg = load("actor.optim.lr=3e-6", f"trainer.output_dir={tmp_path}")
    path = save_config(cfg, run_dir(cfg) / "config.yaml")
    assert path == tmp_path / "rlpost" / "gsm8k-quickstart" / "config.yaml"
    assert load_config(path, check_files=False) == cfg
    assert yaml.safe_load(path.read_text()) == config_to_dict(cfg)


def test_config_cli_writes_run_dir(tmp_path, capsys):
    assert main(["config", QUICKSTART, f"trainer.output_dir={tmp_path}", "--no-check-files", "--write"]) == 0
    written = tmp_path / "rlpost" / "gsm8k-quickstart" / "config.yaml"
    assert yaml.safe_load(written.read_text())["trainer"]["output_dir"] == str(tmp_path)
    assert main(["config", QUICKSTART, "actor.optim.lrr=1", "--no-check-files"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("recipes/*/*.yaml")))
def test_every_recipe_loads_with_its_tool_and_interaction_files(recipe):
    from rlpost.tools import load_interactions, load_tools

    mt = load(recipe=recipe).rollout.multi_turn
    if mt.tool_config_path:
        assert load_tools(mt.tool_config_path)
    if mt.interaction_config_path:
        assert load_interactions(mt.interaction_config_path)
