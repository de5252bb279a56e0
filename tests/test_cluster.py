"""Worker groups on a local Ray: one actor per bundle of a placement group, joined in one gloo world; a worker that
dies makes the next call fail with the role and rank."""

import pytest

from rlpost.cluster.resources import ResourcePool, connect
from rlpost.cluster.worker_group import WorkerDied, WorkerGroup
from rlpost.testing.workers import SumWorker


def test_group_rendezvous_calls_and_a_dead_worker_named():
    import ray

    connect(None, 3)
    pool = ResourcePool("test", 1, 3).create()
    try:
        group = WorkerGroup(SumWorker, pool, "summer")
        assert group.call("all_reduce", 2) == [6, 6, 6]
        assert len(set(group.call("pid"))) == 3
        with pytest.raises(WorkerDied, match="summer worker rank 1 died"):
            group.call("crash_if", 1)
    finally:
        pool.remove()
        ray.shutdown()
