"""A mini-batch's gradient and reported losses do not depend on how it is cut (micro-batch sizes, token budgets,
data-parallel ranks), through the actor's and critic's real update path (PolicyRole/CriticRole.update), against
transformers and hand-written normalisers.

Before the fix: Dr. GRPO (seq-mean-token-sum-norm) divided by each micro-batch's padded width, so the gradient was
1.09-1.82x the constant-normaliser one depending on the micro-batching; and with 4 micro-batches x dp 2 every
reported loss was exactly 1/8 of the mini-batch's."""

import pytest
import torch

from rlpost.testing.distributed import run_ranks
from rlpost.testing.tiny_models import make_tiny_checkpoint

PROMPT, L, N = 3, 12, 8  # prompt tokens, data.max_response_length, samples in the mini-batch
BASE = ["data.max_prompt_length=3", f"data.max_response_length={L}", "data.train_batch_size=2", "rollout.sampling.n=4",
        "actor.ppo_mini_batch_size=2", "actor.optim.lr=1e-9", "actor.optim.clip_grad=1e6"]
CUTS = {"micro 1": ["actor.micro_batch_size=1"], "micro 2": ["actor.micro_batch_size=2"],
        "all in one": ["actor.micro_batch_size=8"], "token budget 32": ["actor.max_tokens_per_micro_batch=32"]}
MODES = ["seq-mean-token-sum-norm", "seq-mean-token-mean", "seq-mean-token-sum", "token-mean"]
FOUR_BY_TWO = ["actor.micro_batch_size=1", "actor.entropy_coeff=0.01", "actor.use_kl_loss=true",
               "critic.micro_batch_size=1", "critic.ppo_mini_batch_size=2", "cluster.n_gpus_per_node=2"]


def _data(path):
    """N right-padded samples with response lengths 1..L, and one with no response tokens at all (its loss mask is
    empty: seq-mean modes must not count it, Dr. GRPO's 1/G does)."""
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    responses = torch.randint(1, L + 1, (N,), generator=g)
    responses[5] = 0
    lengths = PROMPT + responses
    ids = torch.randint(0, hf.config.vocab_size, (N, int(lengths.max())), generator=g)
    positions = torch.arange(ids.shape[1] - 1)
    mask = ((positions >= PROMPT - 1) & (positions < (lengths - 1).unsqueeze(-1))).float()
    with torch.no_grad():
        lp = torch.log_softmax(hf(ids).logits[:, :-1], -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return {"input_ids": ids, "lengths": lengths, "loss_mask": mask, "old_log_probs": (lp + 0.02) * mask,
            "ref_log_probs": (lp + 0.1) * mask, "advantages": torch.randn(N, 1, generator=g) * mask,
            "old_values": torch.randn(N, ids.shape[1] - 1, generator=g) * mask,
            "returns": torch.randn(N, ids.shape[1] - 1, generator=g) * mask}


def _actor_gradients(rank, world, path, data):
    """{(mode, cut): (megatron-named gradients, metrics)} from one PolicyRole.update per setting."""
    from rlpost.batch import Batch
    from rlpost.config import load_config
    from rlpost.config.derived import policy_loss_settings
    from rlpost.megatron.parallel import setup_model_parallel
    from rlpost.workers.roles import PolicyRole

    out = {}
    for mode in MODES:
        for cut, overrides in CUTS.items():
            cfg = load_config(None, BASE + overrides + [f"actor.loss_agg_mode={mode}"], check_files=False)
            setup_model_parallel(1, 1, seed=1)
            role = PolicyRole(cfg.actor, path, total_steps=1, temperature=1.0, loss=policy_loss_settings(cfg))
            metrics = role.update(Batch(dict(data)), 1)
            grads = {n: p.main_grad.detach().clone() for n, p in role.stage.core.named_parameters()}
            out[(mode, cut)] = grads, metrics
    return out


def _reference_gradients(path, data, mode):
    """d/dtheta of the PPO loss at ratio exp(lp - old), written out per mode with its normaliser, in transformers;
    returned in megatron's layout."""
    from transformers import AutoModelForCausalLM

    from rlpost.models.weights import ModelDims, hf_to_megatron_shard, padded_vocab

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids, mask, adv = data["input_ids"], data["loss_mask"], data["advantages"]
    lp = torch.log_softmax(hf(ids).logits[:, :-1], -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    per_token = -adv * torch.exp(lp - data["old_log_probs"]) * mask  # ratios stay inside the clip range
    tokens = mask.sum(-1)
    if mode == "seq-mean-token-sum-norm":  # Dr. GRPO: every row, each token sum over the constant L
        loss = per_token.sum() / (N * L)
    elif mode == "seq-mean-token-mean":  # rows with tokens only
        loss = (per_token.sum(-1)[tokens > 0] / tokens[tokens > 0]).sum() / int((tokens > 0).sum())
    elif mode == "seq-mean-token-sum":
        loss = per_token.sum() / int((tokens > 0).sum())
    else:
        loss = per_token.sum() / mask.sum()
    loss.backward()
    grads = {n: p.grad for n, p in hf.named_parameters()}
    dims = ModelDims.from_hf_config(hf.config)
    return hf_to_megatron_shard(grads.__getitem__, dims, 1, 1, 0, 0, padded_vocab(dims.vocab, 1))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = str(make_tiny_checkpoint("qwen2", tmp_path_factory.mktemp("norm"), seed=5, initializer_range=0.2))
    data = _data(path)
    [actor] = run_ranks(_actor_gradients, 1, path, data)
    return path, data, actor


@pytest.mark.parametrize("mode", MODES)
def test_the_gradient_is_the_same_however_the_mini_batch_is_cut_and_equals_the_hand_normalised_one(setup, mode):
    path, data, actor = setup
    reference = _reference_gradients(path, data, mode)
    for cut in CUTS:
        grads, _ = actor[(mode, cut)]
        assert sorted(grads) == sorted(reference)
        for name, ref in reference.items():
            scale = ref.abs().max().item()
            assert (grads[name] - ref).abs().max().item() <= 2e-5 * max(scale, 1e-3), (mode, cut, name)


def _four_by_two(mode):
    return BASE + FOUR_BY_TWO + [f"actor.loss_agg_mode={mode}", f"critic.loss_agg_mode={mode}"]


def _four_micro_batches_on_two_ranks(rank, world, path, data):
    """Per mode, the actor's and critic's update metrics with 4 micro-batches on each of 2 DP ranks, and the
    critic's values of the whole mini-batch (for its single full-batch loss)."""
    from rlpost.batch import Batch
    from rlpost.config import load_config
    from rlpost.config.derived import policy_loss_settings, value_loss_settings
    from rlpost.megatron.forward import compute_values
    from rlpost.megatron.parallel import setup_model_parallel
    from rlpost.workers.roles import CriticRole, PolicyRole

    out = {}
    for mode in MODES:
        cfg = load_config(None, _four_by_two(mode), check_files=False)
        setup_model_parallel(1, 1, seed=1)
        piece = Batch({k: v[rank::world] for k, v in data.items()})
        actor = PolicyRole(cfg.actor, path, total_steps=1, temperature=1.0,
                           loss=policy_loss_settings(cfg)).update(piece, 1)
        critic_role = CriticRole(cfg.critic, path, total_steps=1, loss=value_loss_settings(cfg))
        values = compute_values(critic_role.stage, [{"input_ids": data["input_ids"]}])[0]["values"]
        out[mode] = actor, critic_role.update(piece, 1), values
    return out


@pytest.fixture(scope="module")
def four_by_two(setup):
    path, data, _ = setup
    return run_ranks(_four_micro_batches_on_two_ranks, 2, path, data)


@pytest.mark.parametrize("mode", MODES)
def test_reported_losses_are_the_mini_batch_values_at_4_micro_batches_and_dp_2(setup, four_by_two, mode):
    """Every DP rank reports the whole mini-batch's pg_loss, entropy, kl_loss and vf_loss (the driver averages
    identical values), equal to one computation over the full batch (the pure loss functions, given the whole
    batch: summing the ranks' and micro-batches' shares must give it)."""
    from transformers import AutoModelForCausalLM

    from rlpost.algorithms import actor_loss, value_loss
    from rlpost.config import load_config
    from rlpost.config.derived import policy_loss_settings, value_loss_settings

    path, data, _ = setup
    results = [ranks[mode] for ranks in four_by_two]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    mask = data["loss_mask"]
    with torch.no_grad():
        logp = torch.log_softmax(hf(data["input_ids"]).logits[:, :-1], -1)
    lp = logp.gather(-1, data["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    cfg = load_config(None, _four_by_two(mode), check_files=False)
    _, want = actor_loss(lp, data["old_log_probs"], data["advantages"], mask, policy_loss_settings(cfg),
                         entropy=entropy, ref_log_prob=data["ref_log_probs"])
    values = results[0][2]
    _, want_critic = value_loss(values, data["old_values"], data["returns"], mask, value_loss_settings(cfg))
    for actor, critic, _ in results:
        for key in ("pg_loss", "entropy", "kl_loss", "pg_clipfrac", "ppo_kl"):
            assert actor[key] == pytest.approx(float(want[key]), rel=1e-4, abs=1e-7), key
        assert critic["vf_loss"] == pytest.approx(float(want_critic["vf_loss"]), rel=1e-4)
        assert critic["vf_clipfrac"] == pytest.approx(float(want_critic["vf_clipfrac"]), rel=1e-4, abs=1e-7)
