"""Every estimator and loss against values worked out by hand (in the comments) on tiny tensors with masks."""

import dataclasses
import math

import pytest
import torch

from rlpost.algorithms import (
    ADV_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    Denominators,
    PolicyLossSettings,
    ValueLossSettings,
    actor_loss,
    agg_loss,
    apply_kl_in_reward,
    compute_advantages,
    kl_penalty,
    make_kl_controller,
    value_loss,
)

T = torch.tensor
S2 = math.sqrt(2.0)


def outcome(scores, mask):
    """Outcome rewards sit on the last unmasked token of each response."""
    rewards = torch.zeros_like(mask, dtype=torch.float32)
    for i, s in enumerate(scores):
        rewards[i, int(mask[i].nonzero().max())] = s
    return rewards


def test_registries_name_every_configured_choice():
    assert ADV_ESTIMATORS.names() == ["gae", "grpo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "remax",
                                      "rloo"]
    assert {"k1", "k2", "k3", "low_var_kl", "abs"} <= set(KL_ESTIMATORS.names())
    assert POLICY_LOSSES.names() == ["gspo", "vanilla"]
    assert LOSS_AGG_MODES.names() == ["seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
                                      "token-mean"]
    with pytest.raises(KeyError, match="did you mean 'grpo'"):
        compute_advantages("grpp")


def test_grpo_group_normalised():
    # group a: scores 1, 0 -> mean .5, unbiased std sqrt(.5) -> +-1/sqrt2
    # group b: 2, 4 -> mean 3, std sqrt2 -> -+1/sqrt2
    mask = T([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    adv, ret = compute_advantages("grpo", token_level_rewards=outcome([1.0, 0.0, 2.0, 4.0], mask), response_mask=mask,
                                  index=["a", "a", "b", "b"], norm_adv_by_std=True, eps=0.0)
    per_sample = torch.tensor([1, -1, -1, 1]) / S2
    torch.testing.assert_close(adv, per_sample.unsqueeze(-1) * mask, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, adv)


def test_dr_grpo_skips_std_and_singletons_keep_raw_score():
    mask = T([[1, 1], [1, 0], [1, 1]])
    adv, _ = compute_advantages("grpo", token_level_rewards=outcome([1.0, 0.0, 3.0], mask), response_mask=mask,
                                index=[7, 7, 9], norm_adv_by_std=False)
    # group 7: mean .5 -> +.5, -.5 ; group 9 has one sample: baseline 0, raw score 3
    torch.testing.assert_close(adv, T([[0.5, 0.5], [-0.5, 0.0], [3.0, 3.0]]))


def test_rloo_leave_one_out():
    mask = T([[1], [1], [1], [1]])
    adv, _ = compute_advantages("rloo", token_level_rewards=outcome([1.0, 2.0, 6.0, 5.0], mask), response_mask=mask,
                                index=["g", "g", "g", "solo"])
    # 1 - (2+6)/2 = -3 ; 2 - (1+6)/2 = -1.5 ; 6 - (1+2)/2 = 4.5 ; single sample keeps its score
    torch.testing.assert_close(adv[:, 0], T([-3.0, -1.5, 4.5, 5.0]))


def test_gae_hand_values_and_whitening():
    # r = [0,0,1], V = [.5,.6,.7], gamma = lam = 1: deltas .1, .1, .3 -> A = [.5, .4, .3], returns = A + V = 1
    rewards, values, mask = T([[0.0, 0.0, 1.0]]), T([[0.5, 0.6, 0.7]]), T([[1, 1, 1]])
    adv, ret = compute_advantages("gae", token_level_rewards=rewards, response_mask=mask, values=values, gamma=1.0,
                                  lam=1.0)
    torch.testing.assert_close(ret, T([[1.0, 1.0, 1.0]]))
    # whitened: mean .4, unbiased std .1 -> [1, 0, -1]
    torch.testing.assert_close(adv, T([[1.0, 0.0, -1.0]]), atol=1e-4, rtol=0)


def test_gae_skips_masked_tool_tokens():
    # middle token is tool output: t2 A = 1 - .7 = .3 ; t0 bootstraps from V(t2): delta = .7 - .5 = .2, A = .2 + .3 = .5
    rewards, values, mask = T([[0.0, 0.0, 1.0]]), T([[0.5, 9.0, 0.7]]), T([[1, 0, 1]])
    _, ret = compute_advantages("gae", token_level_rewards=rewards, response_mask=mask, values=values, gamma=1.0,
                                lam=1.0)
    torch.testing.assert_close(ret, T([[1.0, 0.0, 1.0]]))


def test_gae_discounting():
    # gamma .5, lam .5, r=[0,1], V=[1,1]: t1 delta = 1 - 1 = 0, A1 = 0 ; t0 delta = 0 + .5*1 - 1 = -.5, A0 = -.5 + .25*0
    _, ret = compute_advantages("gae", token_level_rewards=T([[0.0, 1.0]]), response_mask=T([[1, 1]]),
                                values=T([[1.0, 1.0]]), gamma=0.5, lam=0.5)
    torch.testing.assert_close(ret, T([[0.5, 1.0]]))


def test_reinforce_plus_plus_returns_and_whitening():
    # gamma .5: row0 r=[0,0,1] -> G = [.25,.5,1]; row1 r=[0,1,(masked 0)] -> G = [.5,1,0]
    rewards, mask = T([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), T([[1, 1, 1], [1, 1, 0]])
    adv, ret = compute_advantages("reinforce_plus_plus", token_level_rewards=rewards, response_mask=mask, gamma=0.5)
    torch.testing.assert_close(ret, T([[0.25, 0.5, 1.0], [0.5, 1.0, 0.0]]))
    vals = [0.25, 0.5, 1.0, 0.5, 1.0]
    mean = sum(vals) / 5  # .65
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 4)  # sqrt(.1125)
    expect = T([[(v - mean) / std for v in vals[:3]], [(vals[3] - mean) / std, (vals[4] - mean) / std, 0.0]])
    torch.testing.assert_close(adv, expect, atol=1e-5, rtol=0)


def test_reinforce_plus_plus_carries_the_return_over_masked_turns():
    # a multi-turn row: assistant, tool (masked), assistant; gamma .5 discounts only over the policy's tokens
    rewards, mask = T([[0.0, 0.0, 0.0, 0.0, 1.0]]), T([[1, 0, 0, 1, 1]])
    _, ret = compute_advantages("reinforce_plus_plus", token_level_rewards=rewards, response_mask=mask, gamma=0.5)
    torch.testing.assert_close(ret, T([[0.25, 0.0, 0.0, 0.5, 1.0]]))


def test_reinforce_plus_plus_baseline():
    # scores 1, 3 in one group -> -1, +1 on every token; whitened over the 4 unmasked tokens [-1,-1,1,1]: std = 2/sqrt3
    mask = T([[1, 1], [1, 1]])
    adv, _ = compute_advantages("reinforce_plus_plus_baseline", token_level_rewards=outcome([1.0, 3.0], mask),
                                response_mask=mask, index=["p", "p"])
    s = math.sqrt(3.0) / 2
    torch.testing.assert_close(adv, T([[-s, -s], [s, s]]), atol=1e-5, rtol=0)


def test_remax_subtracts_greedy_baseline():
    adv, ret = compute_advantages("remax", token_level_rewards=T([[0.0, 0.0, 1.0]]), response_mask=T([[1, 1, 1]]),
                                  reward_baselines=T([0.4]))
    torch.testing.assert_close(ret, T([[1.0, 1.0, 1.0]]))
    torch.testing.assert_close(adv, T([[0.6, 0.6, 0.6]]))


LOSS = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = T([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the third row has no loss tokens


@pytest.mark.parametrize("mode,expected,denominators", [
    ("token-mean", 7 / 3, None),                  # (1+2+4) / 3 tokens
    ("token-mean", 7 / 6, Denominators(tokens=6, seqs=4, rows=5, loss_scale_factor=3)),  # a micro-batch's share
    ("seq-mean-token-sum", 3.5, None),            # (3 + 4) / 2 rows with tokens: the empty row is not counted
    ("seq-mean-token-mean", 2.75, None),          # (1.5 + 4) / 2
    ("seq-mean-token-mean", 5.5 / 4, Denominators(tokens=6, seqs=4, rows=5, loss_scale_factor=3)),
    ("seq-mean-token-sum-norm", 7 / 9, None),     # (3 + 4) / (3 rows * width 3), verl's default normaliser
    ("seq-mean-token-sum-norm", 7 / 50, Denominators(tokens=6, seqs=4, rows=5, loss_scale_factor=10)),
])
def test_loss_aggregation(mode, expected, denominators):
    assert agg_loss(LOSS, MASK, mode, denominators).item() == pytest.approx(expected)


def test_seq_mean_modes_leave_rows_without_loss_tokens_out_as_verl_does():
    """verl's agg_loss: seq-mean-token-sum/-mean divide by the rows that have loss tokens; Dr. GRPO's mode by every
    row (verl's actor scales it by rows / ppo_mini_batch_size)."""
    d = Denominators.of(MASK, loss_scale_factor=4)
    assert (d.tokens, d.seqs, d.rows, d.loss_scale_factor) == (3, 2, 3, 4)
    empty = torch.zeros(2, 3)
    assert agg_loss(LOSS[:2], empty, "seq-mean-token-mean").item() == 0.0  # no tokens at all: 0, not NaN


def _lp(ratios):
    return torch.log(T(ratios)).unsqueeze(0)


PPO = PolicyLossSettings(policy_loss="vanilla", loss_agg_mode="token-mean", clip_ratio_low=0.2, clip_ratio_high=0.2,
                         clip_ratio_c=3.0, entropy_coeff=0.0, use_kl_loss=False, kl_loss_coef=0.0,
                         kl_loss_type="low_var_kl", loss_scale_factor=None)


def policy_loss(name, log_prob, old_log_prob, advantages, mask, settings=PPO):
    return POLICY_LOSSES.get(name)(log_prob, old_log_prob, advantages, mask, settings, Denominators.of(mask))


def test_vanilla_ppo_clip():
    # ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped) ; ratio .5, A=1: max(-.5, -.8) = -.5 ; ratio 1, A=-1: 1
    log_prob = _lp([1.5, 0.5, 1.0]).requires_grad_()
    loss, m = policy_loss("vanilla", log_prob, torch.zeros(1, 3), T([[1.0, 1.0, -1.0]]), T([[1, 1, 1]]))
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.0) / 3)
    assert m["pg_clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    # d/dlogp of -A*ratio/3 = -A*ratio/3 where unclipped; 0 where clipped
    torch.testing.assert_close(log_prob.grad, T([[0.0, -0.5 / 3, 1.0 / 3]]))


def test_dual_clip_bounds_negative_advantages():
    # ratio 5, A=-1: max(5, 1.2) = 5 -> bounded by -A*c = 3
    loss, m = policy_loss("vanilla", _lp([5.0]), torch.zeros(1, 1), T([[-1.0]]), T([[1]]))
    assert loss.item() == pytest.approx(3.0)
    assert m["pg_clipfrac_lower"].item() == 1.0


def test_clip_higher():
    loss, _ = policy_loss("vanilla", _lp([1.5]), torch.zeros(1, 1), T([[1.0]]), T([[1]]),
                          dataclasses.replace(PPO, clip_ratio_high=0.28))
    assert loss.item() == pytest.approx(-1.28)


def test_masked_tokens_do_not_count():
    loss, _ = policy_loss("vanilla", _lp([1.1, 100.0]), torch.zeros(1, 2), T([[1.0, 1.0]]), T([[1, 0]]))
    assert loss.item() == pytest.approx(-1.1)


def test_gspo_sequence_ratio():
    # token ratios 1.5 and .5 -> sequence ratio sqrt(.75) = .866, inside [.8, 1.2]: loss -.866 on both tokens
    log_prob = _lp([1.5, 0.5]).requires_grad_()
    loss, _ = policy_loss("gspo", log_prob, torch.zeros(1, 2), T([[1.0, 1.0]]), T([[1, 1]]))
    assert loss.item() == pytest.approx(-math.sqrt(0.75))
    loss.backward()
    # each token's gradient is -A * s / 2 (token-mean over 2 tokens), the same for both tokens
    torch.testing.assert_close(log_prob.grad, torch.full((1, 2), -math.sqrt(0.75) / 2))
    # sequence ratio 1.5 is clipped to 1.2 as a whole
    loss, m = policy_loss("gspo", _lp([1.5, 1.5]), torch.zeros(1, 2), T([[1.0, 1.0]]), T([[1, 1]]))
    assert loss.item() == pytest.approx(-1.2)
    assert m["pg_clipfrac"].item() == 1.0
    # sequences of 1 and 3 tokens at ratio 1 with advantages 1 and -1: per sequence (-1 + 1) / 2 = 0, where
    # token-mean (what the settings say) would give (-1 + 3) / 4 = .5; GSPO averages per sequence, as verl's does
    mask = T([[1, 0, 0], [1, 1, 1]])
    loss, _ = policy_loss("gspo", torch.zeros(2, 3), torch.zeros(2, 3), T([[1.0] * 3, [-1.0] * 3]), mask)
    assert loss.item() == pytest.approx(0.0)


def test_kl_estimators():
    # pi = .5, ref = .25: k1 = log 2 ; k2 = .5 log^2 2 ; k3 = ref/pi - log(ref/pi) - 1 = .5 + log 2 - 1
    lp, ref = torch.log(T([0.5])), torch.log(T([0.25]))
    ln2 = math.log(2)
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(ln2)
    assert kl_penalty(lp, ref, "abs").item() == pytest.approx(ln2)
    assert kl_penalty(ref, lp, "abs").item() == pytest.approx(ln2)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5 * ln2 ** 2)
    assert kl_penalty(lp, ref, "low_var_kl").item() == pytest.approx(0.5 + ln2 - 1)
    assert kl_penalty(lp, ref, "k3").item() == kl_penalty(lp, ref, "low_var_kl").item()
    # k3 clamps at 10
    assert kl_penalty(T([0.0]), T([15.0]), "k3").item() == 10.0


def test_kl_in_reward_and_controllers():
    old, ref = torch.log(torch.full((1, 3), 0.5)), torch.log(torch.full((1, 3), 0.25))
    rewards, kl = apply_kl_in_reward(T([[0.0, 0.0, 1.0]]), T([[1, 1, 0]]), old, ref, kl_coef=0.1, estimator="k1")
    ln2 = math.log(2)
    torch.testing.assert_close(rewards, T([[-0.1 * ln2, -0.1 * ln2, 1.0]]))
    assert kl.item() == pytest.approx(ln2)
    fixed = make_kl_controller("fixed", 0.1, 0.1, 100)
    fixed.update(5.0, 10)
    assert fixed.value == 0.1
    ada = make_kl_controller("adaptive", 0.1, 0.1, 100)
    ada.update(0.15, 10)  # error .5 clipped to .2 -> x (1 + .2 * 10/100)
    assert ada.value == pytest.approx(0.102)
    ada.update(0.0, 10)   # error -1 clipped to -.2
    assert ada.value == pytest.approx(0.102 * 0.98)


def test_value_loss_clipping():
    # v = [1, 2], old = .5, R = 1.5, clip .2: v_clip = .7 -> max(.25, .64) = .64 both -> .5 * .64
    clip = ValueLossSettings(cliprange_value=0.2, loss_agg_mode="token-mean", loss_scale_factor=None)
    loss, m = value_loss(T([[1.0, 2.0]]), T([[0.5, 0.5]]), T([[1.5, 1.5]]), T([[1, 1]]), clip)
    assert loss.item() == pytest.approx(0.32)
    assert m["vf_clipfrac"].item() == 1.0
    loss, m = value_loss(T([[0.6]]), T([[0.5]]), T([[1.5]]), T([[1]]), clip)
    assert loss.item() == pytest.approx(0.5 * 0.81)
    assert m["vf_clipfrac"].item() == 0.0


def test_actor_loss_combines_entropy_and_kl():
    lp, adv, mask = _lp([1.0, 1.0]), T([[1.0, -1.0]]), T([[1, 1]])
    entropy, ref = T([[2.0, 4.0]]), torch.log(T([[0.5, 0.5]]))
    settings = dataclasses.replace(PPO, entropy_coeff=0.01, use_kl_loss=True, kl_loss_coef=0.5, kl_loss_type="k1")
    loss, m = actor_loss(lp, torch.zeros(1, 2), adv, mask, settings, entropy=entropy, ref_log_prob=ref)
    # pg: (-1 + 1)/2 = 0 ; entropy mean 3 ; k1 = log1 - log.5 = log 2
    assert m["pg_loss"].item() == pytest.approx(0.0)
    assert loss.item() == pytest.approx(0.0 - 0.01 * 3.0 + 0.5 * math.log(2))
