"""GRPO on a tiny random Qwen2.5-VL with the drawn geometry3k rows, end to end with Ray: the embedded engine gets the
images (SGLang's image_data), the actor the same pixels and mRoPE positions (tp 2, pp 2), and after the first update
the resharded weights, vision tower included, reach the servers (infer_tp 2): step 2's rollout log-probs equal the
updated actor's. Then the same in multi-turn, where a scripted policy zooms into its image with verl's
ImageZoomInTool and the crops join the conversation: the actor reads every turn's images as the servers did."""

import json
from pathlib import Path

import torch
import yaml
from PIL import Image

import rlpost.testing.rewards
from rlpost.data.preprocess import geometry3k
from rlpost.testing.tiny_models import make_scripted_checkpoint, make_tiny_vl_checkpoint

REWARD = f"reward.custom_function={rlpost.testing.rewards.__file__}:share_of_a"


def test_grpo_on_image_prompts_trains_and_syncs_the_vision_tower(tmp_path):
    from rlpost.config import load_config
    from rlpost.trainer.ppo import PPOTrainer

    model = make_tiny_vl_checkpoint(tmp_path / "model", seed=5)
    train, test = geometry3k.build_default(tmp_path / "data", 8, 1, seed=0)
    cfg = load_config(None, [
        f"actor.model_path={model}", f"data.train_files=[{train}]", f"data.val_files=[{test}]",
        "data.max_prompt_length=480",
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
    metrics = metrics_of(path)
    assert sorted(metrics) == [1, 2]
    for m in metrics.values():
        assert m["actor/grad_norm"] > 0 and m["response_length/mean"] > 0
    # the update at lr 1e-3 moves log-probs far more than this: the servers hold the updated weights, tower included,
    # and read the images and positions as the actor does
    assert metrics[2]["actor/rollout_logprob_diff_max"] < 1e-4


def metrics_of(path: Path) -> dict:
    return {m["step"]: m for m in map(json.loads, path.read_text().splitlines())}


def test_multi_turn_with_tool_images_trains_on_what_the_servers_saw(tmp_path):
    from rlpost.config import load_config
    from rlpost.trainer.ppo import PPOTrainer

    call = '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 5, 70, 45]}}'
    model = make_scripted_checkpoint(tmp_path / "model", ["<tool_call>", call, "</tool_call>"], vision=True)
    tools = tmp_path / "tools.yaml"
    tools.write_text(yaml.safe_dump({"tools": [{"class_name": "verl.tools.image_zoom_in_tool.ImageZoomInTool",
                                                "config": {"type": "native"}}]}))
    rows = []
    for i in range(4):
        gen = torch.Generator().manual_seed(i)
        image = tmp_path / f"figure{i}.png"
        Image.fromarray(torch.randint(0, 256, (80, 100 + 10 * i, 3), generator=gen, dtype=torch.uint8).numpy()
                        ).save(image)
        rows.append({"data_source": "figures", "prompt": [{"role": "user", "content": f"<image>Find x ({i})."}],
                     "images": [{"path": str(image)}], "reward_model": {"ground_truth": "a"},
                     "extra_info": {"tools_kwargs": {"image_zoom_in_tool": {"create_kwargs": {"image": str(image)}}}}})
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [
        f"actor.model_path={model}", f"data.train_files=[{data}]", f"data.val_files=[{data}]",
        "data.max_prompt_length=480",
        "data.max_response_length=96", "data.train_batch_size=4", "actor.ppo_mini_batch_size=4",
        "actor.micro_batch_size=4", "actor.optim.lr=1e-3", "rollout.sampling.n=2", "rollout.sampling.temperature=0.7",
        "rollout.dtype=float32", "rollout.max_num_seqs=16", "rollout.multi_turn.enable=true",
        f"rollout.multi_turn.tool_config_path={tools}", "rollout.multi_turn.max_assistant_turns=3",
        "trainer.logger=[jsonl]", f"trainer.output_dir={tmp_path / 'runs'}", "trainer.val_every=0",
        "trainer.val_before_train=false", REWARD, "cluster.n_gpus_per_node=2", "actor.tp=2",
        "rollout.infer_tp=2", "trainer.total_training_steps=2", "trainer.experiment_name=vlm-mt",
        "trainer.save_every=0", "trainer.log_samples=8"])
    trainer = PPOTrainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()
    metrics = metrics_of(tmp_path / "runs" / "rlpost" / "vlm-mt" / "metrics.jsonl")
    assert sorted(metrics) == [1, 2]
    for m in metrics.values():
        assert m["actor/grad_norm"] > 0
        # the actor's log-probs of every turn, crops included, are the servers': before the update (step 1) and
        # after it (step 2, through the resharded weights)
        assert m["actor/rollout_logprob_diff_max"] < 1e-4
    assert metrics[1]["multi_turn/tool_calls_mean"] >= 0.25  # crops were in the batch
