"""Reference log-probs/entropy and critic values from megatron at (tp, pp) = (1, 1) and (2, 2), against
transformers computing the same quantities; a critic update lowers the clipped value loss."""

import pytest
import torch

from rlpost.testing.distributed import run_ranks
from rlpost.testing.tiny_models import make_tiny_checkpoint

TOLERANCE = 1e-4


def _rank(rank, world, path, ids, returns):
    from megatron.core import parallel_state as ps

    from rlpost.config import load_config
    from rlpost.config.derived import value_loss_settings
    from rlpost.megatron.forward import compute_logprobs, compute_values
    from rlpost.megatron.model import build_stage
    from rlpost.megatron.optim import build_optimizer, wrap_ddp
    from rlpost.megatron.parallel import setup_model_parallel
    from rlpost.megatron.update import critic_loss_fn, loss_denominators, train_step

    out = {}
    cfg = load_config(None, ["critic.optim.lr=1e-3"], check_files=False)
    for tp, pp in [(1, 1), (2, 2)]:
        setup_model_parallel(tp, pp, seed=3)
        ref = build_stage(path)
        micro_batches = [{"input_ids": ids[:2]}, {"input_ids": ids[2:]}]
        logprobs = compute_logprobs(ref, micro_batches, temperature=0.7, with_entropy=True)
        mask = (torch.arange(ids.shape[1] - 1) >= 3).float().expand(ids.shape[0], -1).clone()
        mask[1, -2:] = 0
        masked = compute_logprobs(ref, [{"input_ids": ids, "loss_mask": mask}], temperature=0.7, with_entropy=True)
        critic = build_stage(path, value_head=True)
        values = compute_values(critic, micro_batches)
        head = None
        if ps.is_pipeline_last_stage():
            head = {k: v.clone() for k, v in critic.core.output_layer.state_dict().items()}
        optimizer, scheduler = build_optimizer(wrap_ddp(critic), cfg.critic.optim, total_steps=5)
        mbs = [{"input_ids": ids, "loss_mask": torch.ones(ids.shape[0], ids.shape[1] - 1), "returns": returns,
                "old_values": torch.cat([v["values"] for v in values]) if values else torch.zeros_like(returns)}]
        settings = value_loss_settings(cfg)
        loss_fn = critic_loss_fn(settings, n_micro_batches=1, dp=1,
                                 denominators=loss_denominators(mbs, settings.loss_scale_factor))
        losses = [train_step(critic, optimizer, scheduler, mbs, loss_fn).get("vf_loss") for _ in range(3)]
        if ps.is_pipeline_last_stage():
            out[(tp, pp)] = {"log_probs": torch.cat([r["log_probs"] for r in logprobs]),
                             "entropy": torch.cat([r["entropy"] for r in logprobs]),
                             "masked": masked[0], "mask": mask,
                             "values": torch.cat([v["values"] for v in values]), "head": head, "losses": losses}
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = str(make_tiny_checkpoint("qwen3", tmp_path_factory.mktemp("roles"), seed=4, initializer_range=0.2))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 512, (4, 9), generator=gen)
    returns = torch.randn(4, 8, generator=gen)
    return path, ids, run_ranks(_rank, 4, path, ids, returns)


def _hf_reference(path, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    logp = torch.log_softmax(out.logits[:, :-1] / 0.7, -1)
    return (logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1),
            out.hidden_states[-1][:, :-1])  # the final norm is applied to the last hidden state


@pytest.mark.parametrize("layout", [(1, 1), (2, 2)])
def test_reference_logprobs_and_entropy(setup, layout):
    path, ids, results = setup
    lp, ent, _ = _hf_reference(path, ids)
    got = [r[layout] for r in results if layout in r]
    assert got
    for r in got:
        assert (r["log_probs"] - lp).abs().max() < TOLERANCE
        assert (r["entropy"] - ent).abs().max() < TOLERANCE


@pytest.mark.parametrize("layout", [(1, 1), (2, 2)])
def test_lm_head_on_masked_positions_only(setup, layout):
    path, ids, results = setup
    lp, ent, _ = _hf_reference(path, ids)
    for r in [r[layout] for r in results if layout in r]:
        mask = r["mask"].bool()
        assert (r["masked"]["log_probs"][mask] - lp[mask]).abs().max() < TOLERANCE
        assert (r["masked"]["entropy"][mask] - ent[mask]).abs().max() < TOLERANCE
        assert torch.all(r["masked"]["log_probs"][~mask] == 0)


@pytest.mark.parametrize("layout", [(1, 1), (2, 2)])
def test_critic_values_and_update(setup, layout):
    path, ids, results = setup
    _, _, hidden = _hf_reference(path, ids)
    for r in [r[layout] for r in results if layout in r]:
        expected = hidden @ r["head"]["weight"].T + r["head"]["bias"]
        assert (r["values"] - expected[..., 0]).abs().max() < TOLERANCE
        assert r["losses"][2] < r["losses"][0]
    heads = [r[layout]["head"]["weight"] for r in results if layout in r]
    assert all(torch.equal(h, heads[0]) for h in heads)  # the seeded head is the same on every rank
