"""Actor PPO updates in parallel layouts give the weights of the single-process update on the same data.

Two optimizer steps (Adam, grad clipping, entropy bonus, KL loss) at (tp, pp, dp) = (2, 2, 1) and (1, 1, 2)
against (1, 1, 1). Tolerance: 1e-6 absolute in fp32. Layouts reduce sums in different orders, and Adam's first
steps are about lr * g / (|g| + eps): with eps = 1e-8 a gradient near zero turns rounding noise into an lr-sized
step (measured: 1.3e-5 at TP=2 with eps 1e-8, 6e-8 with eps 1e-2, PP=2 bitwise either way), so eps = 1e-2 keeps
the update proportional to the gradient and the comparison about the gradients."""

import pytest
import torch

from rlpost.config import load_config
from rlpost.testing.distributed import run_ranks
from rlpost.testing.tiny_models import make_tiny_checkpoint

TOLERANCE = 1e-6
SEQS, LENGTH, PROMPT = 8, 12, 4
OVERRIDES = ["actor.optim.lr=1e-3", "actor.optim.clip_grad=0.5", "actor.entropy_coeff=0.01", "actor.use_kl_loss=true",
             "actor.kl_loss_coef=0.1", "actor.optim.weight_decay=0.0", "actor.optim.eps=1e-2"]


def _data(path):
    """Right-padded sequences; the loss covers response tokens only; old/ref log-probs from transformers."""
    from transformers import AutoModelForCausalLM

    gen = torch.Generator().manual_seed(3)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.randint(0, hf.config.vocab_size, (SEQS, LENGTH), generator=gen)
    lengths = torch.randint(PROMPT + 2, LENGTH + 1, (SEQS,), generator=gen)
    positions = torch.arange(1, LENGTH)
    mask = ((positions >= PROMPT) & (positions < lengths.unsqueeze(-1))).float()
    with torch.no_grad():
        logp = torch.log_softmax(hf(ids).logits[:, :-1], -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return {
        "input_ids": ids, "loss_mask": mask,
        "old_log_probs": logp + 0.05 * torch.randn(logp.shape, generator=gen),
        "ref_log_probs": logp + 0.1 * torch.randn(logp.shape, generator=gen),
        "advantages": torch.randn(logp.shape, generator=gen) * mask,
    }


def _rank(rank, world, path, tp, pp, data, overrides):
    from megatron.core import parallel_state as ps

    from rlpost.config.derived import policy_loss_settings
    from rlpost.megatron.model import build_stage, stream_hf_weights
    from rlpost.megatron.optim import build_optimizer, wrap_ddp
    from rlpost.megatron.parallel import setup_model_parallel
    from rlpost.megatron.update import actor_loss_fn, loss_denominators, train_step

    cfg = load_config(None, overrides, check_files=False)
    setup_model_parallel(tp, pp, seed=1)
    stage = build_stage(path)
    ddp = wrap_ddp(stage)
    optimizer, scheduler = build_optimizer(ddp, cfg.actor.optim, total_steps=2)
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    metrics = []
    for step in range(2):  # two mini-batches of SEQS/2 sequences, split over DP, one sequence per micro-batch
        rows = range(step * SEQS // 2, (step + 1) * SEQS // 2)
        mine = [r for i, r in enumerate(rows) if i % dp == dp_rank]
        micro_batches = [{k: v[r : r + 1] for k, v in data.items()} for r in mine]
        denominators = loss_denominators(micro_batches, LENGTH - 1, ps.get_data_parallel_group())
        loss_fn = actor_loss_fn(stage, policy_loss_settings(cfg), n_micro_batches=len(micro_batches), dp=dp,
                                denominators=denominators)
        metrics.append(train_step(stage, optimizer, scheduler, micro_batches, loss_fn, ps.get_data_parallel_group()))
    weights = dict(stream_hf_weights(stage))  # every TP rank takes part in the gathers
    if dp_rank or ps.get_tensor_model_parallel_rank():
        weights = {}
    return weights, metrics


def _weights(path, data, tp, pp, dp, overrides=tuple(OVERRIDES)):
    results = run_ranks(_rank, tp * pp * dp, path, tp, pp, data, list(overrides))
    merged = {}
    for weights, _ in results:
        merged.update(weights)
    return merged, results[-1][1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    path = str(make_tiny_checkpoint("qwen2", tmp_path_factory.mktemp("upd"), seed=5, initializer_range=0.2))
    data = _data(path)
    return {layout: _weights(path, data, *layout) for layout in [(1, 1, 1), (2, 2, 1), (1, 1, 2)]}, path


def test_single_process_update_changes_weights(runs):
    from safetensors.torch import load_file

    (results, path) = runs
    initial = load_file(f"{path}/model.safetensors")
    weights, metrics = results[(1, 1, 1)]
    assert sorted(weights) == sorted(initial)
    moved = max((weights[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-4
    assert all(m["grad_norm"] > 0 and not m["update_skipped"] for m in metrics)


@pytest.mark.parametrize("layout", [(2, 2, 1), (1, 1, 2)])
def test_parallel_update_matches_single_process(runs, layout):
    (results, _) = runs
    reference, ref_metrics = results[(1, 1, 1)]
    weights, metrics = results[layout]
    assert sorted(weights) == sorted(reference)
    worst = max((weights[k] - reference[k]).abs().max().item() for k in reference)
    assert worst < TOLERANCE, worst
    for m, r in zip(metrics, ref_metrics):
        assert m["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-5)


def _one_step(rank, world, path, data, on_policy):
    from rlpost.config.derived import policy_loss_settings
    from rlpost.megatron.model import build_stage, stream_hf_weights
    from rlpost.megatron.optim import build_optimizer, wrap_ddp
    from rlpost.megatron.parallel import setup_model_parallel
    from rlpost.megatron.update import actor_loss_fn, loss_denominators, train_step

    cfg = load_config(None, ["actor.optim.lr=1e-3", "actor.optim.eps=1e-2"], check_files=False)
    setup_model_parallel(1, 1, seed=1)
    stage = build_stage(path)
    optimizer, scheduler = build_optimizer(wrap_ddp(stage), cfg.actor.optim, total_steps=1)
    micro_batches = [{k: v[r : r + 2] for k, v in data.items()} for r in range(0, SEQS, 2)]
    settings = policy_loss_settings(cfg)
    loss_fn = actor_loss_fn(stage, settings, n_micro_batches=len(micro_batches), dp=1,
                            denominators=loss_denominators(micro_batches, settings.loss_scale_factor),
                            on_policy=on_policy)
    metrics = train_step(stage, optimizer, scheduler, micro_batches, loss_fn)
    return dict(stream_hf_weights(stage)), metrics


def test_on_policy_step_uses_its_own_log_probs(runs):
    """One optimizer step without old log-probs equals the step given the exact current log-probs (from
    transformers), and reports the rollout-vs-train difference it was handed."""
    (_, path) = runs
    from transformers import AutoModelForCausalLM

    data = _data(path)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        exact = torch.log_softmax(hf(data["input_ids"]).logits[:, :-1], -1).gather(
            -1, data["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    noise = 0.01 * torch.randn(exact.shape, generator=gen)
    common = {"input_ids": data["input_ids"], "loss_mask": data["loss_mask"], "advantages": data["advantages"]}
    [(on_weights, on_metrics)] = run_ranks(_one_step, 1, path, common | {"rollout_log_probs": exact + noise}, True)
    [(ref_weights, ref_metrics)] = run_ranks(_one_step, 1, path, common | {"old_log_probs": exact}, False)
    worst = max((on_weights[k] - ref_weights[k]).abs().max().item() for k in ref_weights)
    assert worst < TOLERANCE, worst
    assert on_metrics["ppo_kl"] == 0.0 and on_metrics["pg_clipfrac"] == 0.0
    assert on_metrics["rollout_logprob_diff_max"] == pytest.approx(float((noise.abs() * data["loss_mask"]).max()),
                                                                   abs=1e-5)
    assert on_metrics["entropy"] > 0 and "entropy" not in ref_metrics
