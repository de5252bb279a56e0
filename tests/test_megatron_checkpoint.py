"""Save at step 1, load into a freshly built model/optimizer, continue: bitwise equal to the uninterrupted run.
Layout (tp, pp, dp) = (2, 1, 2), so TP shards and the DP-sharded distributed-optimizer state both round-trip.
The exported HF directory loads in transformers with the trained weights. A bf16 Qwen2 (biases beside norms in
the no-weight-decay group) round-trips too."""

import pytest
import torch

from rlpost.testing.distributed import run_ranks
from rlpost.testing.tiny_models import make_tiny_checkpoint

OVERRIDES = ["actor.optim.lr=1e-3", "actor.optim.eps=1e-2", "actor.entropy_coeff=0.01"]


def _rank(rank, world, path, out, data, tp=2, dtype="float32"):
    from megatron.core import parallel_state as ps

    from rlpost.config import load_config
    from rlpost.config.derived import policy_loss_settings
    from rlpost.megatron.dist_checkpoint import export_hf, load_checkpoint, save_checkpoint
    from rlpost.megatron.model import build_stage, stream_hf_weights
    from rlpost.megatron.optim import build_optimizer, wrap_ddp
    from rlpost.megatron.parallel import setup_model_parallel
    from rlpost.megatron.update import actor_loss_fn, loss_denominators, train_step

    cfg = load_config(None, OVERRIDES, check_files=False)
    loss = policy_loss_settings(cfg)
    setup_model_parallel(tp, 1, seed=1)
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()

    def build():
        stage = build_stage(path, dtype)
        optimizer, scheduler = build_optimizer(wrap_ddp(stage), cfg.actor.optim, total_steps=4, dtype=dtype)
        return stage, optimizer, scheduler

    def step(stage, optimizer, scheduler, rows):
        mbs = [{k: v[r : r + 1] for k, v in data.items()} for i, r in enumerate(rows) if i % dp == dp_rank]
        group = ps.get_data_parallel_group()
        fn = actor_loss_fn(stage, loss, n_micro_batches=len(mbs), dp=dp,
                           denominators=loss_denominators(mbs, loss.loss_scale_factor, group))
        return train_step(stage, optimizer, scheduler, mbs, fn, group)

    stage, optimizer, scheduler = build()
    step(stage, optimizer, scheduler, [0, 1, 2, 3])
    save_checkpoint(stage, optimizer, scheduler, f"{out}/step_1", extra={"step": 1})
    straight = step(stage, optimizer, scheduler, [4, 5, 6, 7])
    uninterrupted = dict(stream_hf_weights(stage))
    rng_uninterrupted = torch.rand(4)

    stage, optimizer, scheduler = build()
    extra = load_checkpoint(stage, optimizer, scheduler, f"{out}/step_1")
    resumed_metrics = step(stage, optimizer, scheduler, [4, 5, 6, 7])
    resumed = dict(stream_hf_weights(stage))
    rng_resumed = torch.rand(4)
    export_hf(stage, f"{out}/hf", path)
    try:
        save_checkpoint(stage, optimizer, scheduler, f"{out}/step_1")
        overwrite = None
    except FileExistsError as e:
        overwrite = str(e)
    return {
        "extra": extra, "overwrite": overwrite, "lr": (straight["lr"], resumed_metrics["lr"]),
        "bitwise": sorted(k for k in uninterrupted if not torch.equal(uninterrupted[k], resumed[k])),
        "rng": torch.equal(rng_uninterrupted, rng_resumed), "weights": resumed if rank == 0 else None,
    }


def _data() -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (8, 10), generator=gen)
    mask = torch.ones(8, 9)
    mask[:, :3] = 0
    return {"input_ids": ids, "loss_mask": mask, "old_log_probs": -5 + 0.1 * torch.randn(8, 9, generator=gen),
            "advantages": torch.randn(8, 9, generator=gen) * mask}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = str(make_tiny_checkpoint("llama", tmp_path_factory.mktemp("ck_src"), seed=2, initializer_range=0.2))
    out = tmp_path_factory.mktemp("ck_out")
    return run_ranks(_rank, 4, path, str(out), _data()), out


def test_resume_is_bitwise(run):
    results, _ = run
    for r in results:
        assert r["bitwise"] == [] and r["rng"] and r["extra"] == {"step": 1}
        assert r["lr"][0] == r["lr"][1]
        assert "already exists" in r["overwrite"]


def test_bf16_qwen2_resume_is_bitwise(tmp_path):
    path = str(make_tiny_checkpoint("qwen2", tmp_path / "src", seed=2, initializer_range=0.2))
    [result] = run_ranks(_rank, 1, path, str(tmp_path / "out"), _data(), 1, "bfloat16")
    assert result["bitwise"] == [] and result["extra"] == {"step": 1}


def test_checkpoint_directory_is_complete_and_partial_is_refused(run, tmp_path):
    from rlpost.megatron.dist_checkpoint import is_complete

    _, out = run
    assert is_complete(out / "step_1") and not (out / ".step_1.partial").exists()
    partial = tmp_path / ".step_2.partial"
    partial.mkdir()
    assert not is_complete(partial)


def test_exported_hf_directory_loads_in_transformers(run):
    from transformers import AutoModelForCausalLM

    results, out = run
    model = AutoModelForCausalLM.from_pretrained(out / "hf", dtype=torch.float32)
    state = model.state_dict()
    for name, tensor in results[0]["weights"].items():
        assert torch.equal(state[name], tensor), name
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_a_qwen2_5_vl_actor_resumes_bitwise_with_its_vision_tower(tmp_path):
    """The tower is an HF module inside the megatron model: it and its optimizer state go through the distributed
    checkpoint with everything else (tp 2), and the exported HF directory loads as Qwen2.5-VL with the tower."""
    from safetensors.torch import load_file

    from rlpost.testing.tiny_models import make_tiny_vl_checkpoint

    path = str(make_tiny_vl_checkpoint(tmp_path / "src", seed=2, initializer_range=0.2))
    results = run_ranks(_rank, 2, path, str(tmp_path / "out"), _data(), 2)
    for r in results:
        assert r["bitwise"] == [] and r["extra"] == {"step": 1}
    weights = results[0]["weights"]
    assert any(name.startswith("visual.") for name in weights)
    exported = load_file(tmp_path / "out" / "hf" / "model-00001-of-00001.safetensors")
    for name, tensor in weights.items():
        assert torch.equal(exported[name], tensor), name
    assert (tmp_path / "out" / "hf" / "preprocessor_config.json").is_file()
    source = load_file(f"{path}/model.safetensors")
    # the optimizer moved the tower too (weight decay: these rows carry no images), so the round trip is not vacuous
    assert any(not torch.equal(source[n], weights[n]) for n in weights if n.startswith("visual."))
