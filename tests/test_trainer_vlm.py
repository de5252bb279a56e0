"""GRPO on a tiny random Qwen2.5-VL with the drawn geometry3k rows, end to end with Ray: the embedded engine gets the
images (SGLang's image_data), the actor the same pixels and mRoPE positions (tp 2, pp 2), and after the first update
the resharded weights, vision tower included, reach the servers (infer_tp 2): step 2's rollout log-probs equal the
updated actor's."""

import json
from pathlib import Path

import rlpost.testing.rewards
from rlpost.data.preprocess import geometry3k
from rlpost.testing.tiny_models import make_tiny_vl_checkpoint

REWARD = f"reward.custom_function={rlpost.testing.rewards.__file__}:share_of_a"


def test_grpo_on_image_prompts_trains_and_syncs_the_vision_tower(tmp_path):
    from rlpost.config import load_config
    from rlpost.trainer.ppo import PPOTrainer

    model = make_tiny_vl_checkpoint(tmp_path / "model", seed=5)
    train, test = geometry3k.build_default(tmp_path / "data", 8, 1, seed=0)
    cfg = load_config(None, [
        f"actor.model_path={model}", f"data.train_files=[{train}]", f"data.val_files=[{test}]",
        "data.max_prompt_length=400",
        "data.max_response_length=12", "data.train_batch_size=4", "actor.ppo_mini_batch_size=4",
        "actor.micro_batch_size=4", "actor.optim.lr=1e-3", "rollout.sampling.n=2", "rollout.dtype=float32",
        "rollout.max_num_seqs=16", "trainer.logger=[jsonl]", f"trainer.output_dir={tmp_path / 'runs'}",
        "trainer.val_every=0", "trainer.val_before_train=false", REWARD, "cluster.n_gpus_per_node=4",
        "actor.tp=2", "actor.pp=2", "rollout.infer_tp=2", "trainer.total_training_steps=2",
        "trainer.experiment_name=vlm", "trainer.save_every=0"])
    trainer = PPOTrainer(cfg)
    try:
        batch = next(iter(trainer.prompts))
        assert all(len(m["image_grid_thw"]) == 1 for m in batch["multi_modal_inputs"])
        trainer.fit()
    finally:
        trainer.close()
    path = tmp_path / "runs" / "rlpost" / "vlm" / "metrics.jsonl"
    metrics = {m["step"]: m for m in map(json.loads, Path(path).read_text().splitlines())}
    assert sorted(metrics) == [1, 2]
    for m in metrics.values():
        assert m["actor/grad_norm"] > 0 and m["response_length/mean"] > 0
    # the update at lr 1e-3 moves log-probs far more than this: the servers hold the updated weights, tower included,
    # and read the images and positions as the actor does
    assert metrics[2]["actor/rollout_logprob_diff_max"] < 1e-4
