"""Log-probs and entropy from vocabulary-parallel logits, without gathering the full vocabulary on any rank.

Each TP rank holds logits for a contiguous slice of the (padded) vocabulary. The global max is taken without
gradient (log-sum-exp does not depend on it); the partition sum, the target logit and sum(p * logit) are
all-reduced. Every TP rank holds the same (replicated) loss, so the all-reduce's backward is the identity, as in
megatron's reduce-from-tensor-parallel region. Padded vocabulary entries are masked: their zero weights would
otherwise put exp(0) mass into the partition function.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_MASKED = -1.0e4  # exp underflows to exactly 0 in fp32 after the max shift; unlike -inf, 0 * _MASKED is 0


class _AllReduceReplicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def vocab_parallel_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, vocab_size: int, group=None, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [..., V_local] (this rank's slice), targets [...] in the true vocabulary -> (log_prob, entropy)."""
    logits = logits.float()
    tp = dist.get_world_size(group) if dist.is_initialized() else 1
    rank = dist.get_rank(group) if tp > 1 else 0
    local = logits.shape[-1]
    start = rank * local
    if start + local > vocab_size:
        ids = torch.arange(start, start + local, device=logits.device)
        logits = logits.masked_fill(ids >= vocab_size, _MASKED)

    def all_sum(t: torch.Tensor) -> torch.Tensor:
        return _AllReduceReplicated.apply(t, group) if tp > 1 else t

    with torch.no_grad():
        shift = logits.max(dim=-1).values
        if tp > 1:
            dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
    shifted = logits - shift.unsqueeze(-1)
    exp = shifted.exp()
    sum_exp = all_sum(exp.sum(-1))
    in_slice = (targets >= start) & (targets < start + local)
    local_target = (targets - start).clamp(0, local - 1)
    picked = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1) * in_slice
    log_z = sum_exp.log()
    log_prob = all_sum(picked) - log_z
    if not with_entropy:
        return log_prob, None
    # H = log Z - E_p[shifted logit]
    expected = all_sum((exp * shifted).sum(-1)) / sum_exp
    return log_prob, log_z - expected
