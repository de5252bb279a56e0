"""Which training ranks form each inference replica, and which ranks exchange shards (HybridFlow's micro-DP groups).

Training ranks follow megatron's order (tp fastest, then dp, then pp): rank = tp_rank + tp * (dp_rank + dp * pp_rank).
Within one data-parallel replica, number the tp * pp model-parallel ranks with the pipeline stage fastest,
m = pp_rank + pp * tp_rank. Then, with d_g = tp * pp / infer_tp:

- micro-DP group j of a replica = the d_g consecutive ranks m in [j * d_g, (j + 1) * d_g): every pipeline stage of the
  training TP shards that make up inference TP shard j. An all-gather inside this group alone gives each member
  inference shard j of every layer; nothing crosses groups;
- inference replica k of a training replica = the ranks m = k + j * d_g for j in [0, infer_tp) (stride d_g), the
  one at j being inference TP rank j.

Each rank then sends its 1/(tp*pp) of the model to d_g - 1 peers: (tp*pp - infer_tp) / (infer_tp*tp*pp) of the model,
against (tp*pp - 1) / (tp*pp) for a full all-gather. When the inference TP is finer than the training TP
(infer_tp = c * tp, c > 1), every inference shard lies inside one training shard: its pipeline stages gather it
(nothing to send at pp 1) and ranks slice locally; d_g is then not an integer and the formula does not apply (each
rank sends (pp - 1) / (tp * pp)). Layouts where neither TP divides the other are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


class LayoutError(ValueError):
    """A training/inference layout pair the resharder cannot map."""


@dataclass(frozen=True)
class TrainCoord:
    rank: int
    tp_rank: int
    pp_rank: int
    dp_rank: int


def train_rank(tp_rank: int, pp_rank: int, dp_rank: int, tp: int, dp: int) -> int:
    return tp_rank + tp * (dp_rank + dp * pp_rank)


def train_coord(rank: int, tp: int, pp: int, dp: int) -> TrainCoord:
    return TrainCoord(rank, rank % tp, rank // (tp * dp), (rank // tp) % dp)


@dataclass(frozen=True)
class ReshardPlan:
    tp: int
    pp: int
    dp: int
    infer_tp: int
    replicas: tuple[tuple[int, ...], ...]  # global training ranks of each inference replica, in inference TP order
    micro_dp_groups: tuple[tuple[int, ...], ...]  # ranks that all-gather together (singletons: local slicing)
    source_tp_ranks: dict[int, tuple[int, ...]]  # inference TP rank -> the training TP ranks its shard comes from

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def micro_dp(self) -> int:
        return len(self.micro_dp_groups[0])

    def inference_position(self, rank: int) -> tuple[int, int]:
        """(replica index, inference TP rank) of a training rank."""
        for index, replica in enumerate(self.replicas):
            if rank in replica:
                return index, replica.index(rank)
        raise KeyError(rank)

    def group_of(self, rank: int) -> tuple[int, ...]:
        return next(g for g in self.micro_dp_groups if rank in g)

    def sent_fraction(self) -> Fraction:
        """Share of the model each rank sends in its group's all-gather: (group size - 1) / (tp * pp)."""
        return Fraction(self.micro_dp - 1, self.tp * self.pp)

    def full_gather_fraction(self) -> Fraction:
        return Fraction(self.tp * self.pp - 1, self.tp * self.pp)


def make_plan(tp: int, pp: int, dp: int, infer_tp: int, infer_pp: int = 1) -> ReshardPlan:
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp), ("infer_tp", infer_tp), ("infer_pp", infer_pp)):
        if not isinstance(value, int) or value < 1:
            raise LayoutError(f"{name} must be a positive integer, got {value!r}")
    world = tp * pp * dp
    if infer_pp != 1:
        raise LayoutError(f"infer_pp = {infer_pp}: inference servers here are tensor-parallel only (infer_pp 1)")
    if world % infer_tp:
        raise LayoutError(f"infer_tp = {infer_tp} does not divide the {world} training ranks "
                          f"(tp {tp} x pp {pp} x dp {dp})")
    if tp % infer_tp == 0:
        return _micro_dp_plan(tp, pp, dp, infer_tp)
    if infer_tp % tp == 0:
        return _slicing_plan(tp, pp, dp, infer_tp)
    raise LayoutError(f"cannot build inference TP {infer_tp} from training TP {tp}: one must divide the other")


def _micro_dp_plan(tp: int, pp: int, dp: int, infer_tp: int) -> ReshardPlan:
    d_g = tp * pp // infer_tp
    per_shard = tp // infer_tp

    def rank_of(dp_rank: int, m: int) -> int:
        return train_rank(m // pp, m % pp, dp_rank, tp, dp)

    groups, replicas = [], []
    for dp_rank in range(dp):
        groups += [tuple(rank_of(dp_rank, m) for m in range(j * d_g, (j + 1) * d_g)) for j in range(infer_tp)]
        replicas += [tuple(rank_of(dp_rank, k + j * d_g) for j in range(infer_tp)) for k in range(d_g)]
    sources = {j: tuple(range(j * per_shard, (j + 1) * per_shard)) for j in range(infer_tp)}
    return ReshardPlan(tp, pp, dp, infer_tp, tuple(replicas), tuple(groups), sources)


def _slicing_plan(tp: int, pp: int, dp: int, infer_tp: int) -> ReshardPlan:
    """infer_tp = c * tp: inference rank j takes slice j % c of training TP shard j // c. The pipeline stages of
    one training shard gather it whole (no gather at pp 1), then each member slices what its inference rank
    needs; replicas draw the c holders of each shard from across stages and data-parallel replicas."""
    c = infer_tp // tp
    groups = tuple(tuple(train_rank(t, s, d, tp, dp) for s in range(pp)) for d in range(dp) for t in range(tp))
    holders = {t: [train_rank(t, s, d, tp, dp) for d in range(dp) for s in range(pp)] for t in range(tp)}
    replicas = tuple(tuple(holders[j // c][k * c + j % c] for j in range(infer_tp)) for k in range(pp * dp // c))
    return ReshardPlan(tp, pp, dp, infer_tp, replicas, groups, {j: (j // c,) for j in range(infer_tp)})
