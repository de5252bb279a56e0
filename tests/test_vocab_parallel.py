"""Vocab-parallel log-probs/entropy on 2 gloo ranks against log_softmax over the full vocabulary."""

import torch

from rlpost.megatron.logits import vocab_parallel_logprobs
from rlpost.testing.distributed import run_ranks

VOCAB, PADDED = 13, 16  # 3 padded entries on the last rank


def _reference():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, PADDED, generator=gen) * 3
    targets = torch.randint(0, VOCAB, (2, 5), generator=gen)
    full = logits[..., :VOCAB].clone().requires_grad_()
    logp = torch.log_softmax(full, -1)
    lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    (lp.sum() + 0.5 * ent.sum()).backward()
    grad = torch.cat([full.grad, torch.zeros(2, 5, PADDED - VOCAB)], -1)
    return logits, targets, lp.detach(), ent.detach(), grad


def _rank(rank, world):
    logits, targets, *_ = _reference()
    local = logits.chunk(world, -1)[rank].clone().requires_grad_()
    lp, ent = vocab_parallel_logprobs(local, targets, VOCAB, with_entropy=True)
    (lp.sum() + 0.5 * ent.sum()).backward()
    return lp.detach(), ent.detach(), local.grad


def test_matches_full_vocabulary_softmax():
    _, _, lp, ent, grad = _reference()
    results = run_ranks(_rank, 2)
    for rank, (r_lp, r_ent, r_grad) in enumerate(results):
        torch.testing.assert_close(r_lp, lp, atol=1e-5, rtol=0)
        torch.testing.assert_close(r_ent, ent, atol=1e-5, rtol=0)
        torch.testing.assert_close(r_grad, grad.chunk(2, -1)[rank], atol=1e-5, rtol=0)


def test_single_rank_masks_padding():
    logits, targets, lp, ent, _ = _reference()
    r_lp, r_ent = vocab_parallel_logprobs(logits, targets, VOCAB, with_entropy=True)
    torch.testing.assert_close(r_lp, lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_ent, ent, atol=1e-5, rtol=0)
