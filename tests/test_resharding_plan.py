"""The HybridFlow plan: every inference shard is assembled inside one micro-DP group, bytes follow the formula."""

from fractions import Fraction

import pytest

from rlpost.resharding.plan import LayoutError, make_plan, train_coord, train_rank


def layouts(max_world=8):
    for tp in (1, 2, 4, 8):
        for pp in (1, 2, 4, 8):
            for dp in (1, 2, 4, 8):
                if tp * pp * dp <= max_world:
                    for infer_tp in (1, 2, 4):
                        if (tp * pp * dp) % infer_tp == 0:
                            yield tp, pp, dp, infer_tp


def test_rank_order_is_megatrons():
    assert [train_rank(t, p, d, tp=2, dp=2) for p in range(2) for d in range(2) for t in range(2)] == list(range(8))
    assert all(train_rank(c.tp_rank, c.pp_rank, c.dp_rank, 2, 2) == r
               for r in range(8) for c in [train_coord(r, tp=2, pp=2, dp=2)])


@pytest.mark.parametrize("tp,pp,dp,infer_tp", list(layouts()))
def test_every_layout_assembles_each_shard_inside_one_group(tp, pp, dp, infer_tp):
    plan = make_plan(tp, pp, dp, infer_tp)
    world = tp * pp * dp
    members = [r for replica in plan.replicas for r in replica]
    assert sorted(members) == list(range(world)) and all(len(r) == infer_tp for r in plan.replicas)
    assert sorted(r for g in plan.micro_dp_groups for r in g) == list(range(world))
    for rank in range(world):
        _, j = plan.inference_position(rank)
        # what the rank holds after the all-gather inside its micro-DP group: (pipeline stage, training TP shard)
        held = {(c.pp_rank, c.tp_rank) for c in (train_coord(r, tp, pp, dp) for r in plan.group_of(rank))}
        needed = {(s, t) for s in range(pp) for t in plan.source_tp_ranks[j]}
        assert held == needed, (rank, held, needed)
        assert len({train_coord(r, tp, pp, dp).dp_rank for r in plan.group_of(rank)}) == 1
    if tp % infer_tp == 0:
        assert plan.micro_dp == tp * pp // infer_tp
        assert plan.sent_fraction() == Fraction(tp * pp - infer_tp, infer_tp * tp * pp)
    else:
        assert plan.micro_dp == pp and plan.sent_fraction() == Fraction(pp - 1, tp * pp)
    assert plan.full_gather_fraction() == Fraction(tp * pp - 1, tp * pp)


def test_hybridflow_example_from_the_paper():
    """Training TP 4, generation TP 2: micro-DP groups {0,1},{2,3}; generation TP groups {0,2},{1,3}."""
    plan = make_plan(tp=4, pp=1, dp=1, infer_tp=2)
    assert plan.micro_dp_groups == ((0, 1), (2, 3)) and plan.replicas == ((0, 2), (1, 3))


def test_finer_inference_tp_slices_after_gathering_stages():
    plan = make_plan(tp=1, pp=2, dp=2, infer_tp=2)
    assert plan.micro_dp_groups == ((0, 2), (1, 3)) and plan.replicas == ((0, 2), (1, 3))
    assert make_plan(tp=1, pp=1, dp=4, infer_tp=2).sent_fraction() == 0


def test_pipeline_stages_are_gathered_inside_the_group():
    plan = make_plan(tp=2, pp=2, dp=1, infer_tp=2)
    assert plan.micro_dp_groups == ((0, 2), (1, 3))  # ranks 0/2 hold TP shard 0 of stages 0/1
    assert plan.replicas == ((0, 1), (2, 3))


@pytest.mark.parametrize("args,message", [
    ((8, 1, 3, 3), "cannot build inference TP 3 from training TP 8"),
    ((2, 1, 1, 4), "infer_tp = 4 does not divide the 2 training ranks"),
    ((2, 2, 2, 3), "infer_tp = 3 does not divide"),
    ((2, 2, 2, 2, 2), "infer_pp 1"),
    ((0, 1, 1, 1), "tp must be a positive integer"),
])
def test_impossible_layouts_are_refused(args, message):
    with pytest.raises(LayoutError, match=message):
        make_plan(*args)
