"""A worker group: one Ray actor per device of a resource pool, joined in one torch.distributed world.

Calls go to every rank at once. `dp_call` splits a Batch over data-parallel ranks (balanced by tokens), hands each
model-parallel rank of a DP replica the same piece, and collects the answer from the rank that holds it (TP rank
0 of the last pipeline stage), in the original sample order. A dead worker ends the call with the role and rank.
"""

from __future__ import annotations

from typing import Any

from rlpost.batch import Batch, restore_order
from rlpost.cluster.resources import ResourcePool


class WorkerDied(RuntimeError):
    """A worker of a group exited (crash, OOM kill, node loss)."""


class WorkerGroup:
    def __init__(self, worker_cls: type, pool: ResourcePool, role: str, *args, **kwargs):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.role, self.pool = role, pool
        remote = ray.remote(worker_cls)
        bundles = pool.bundles()
        self.workers = [
            remote.options(
                num_cpus=1, num_gpus=pool.gpus_per_bundle,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    group, bundle, placement_group_capture_child_tasks=False),
            ).remote(rank, len(bundles), pool.per_node, *args, **kwargs)
            for rank, (group, bundle) in enumerate(bundles)
        ]
        address, port = self._get([self.workers[0].rendezvous_address.remote()])[0]
        self._get([w.init_distributed.remote(address, port) for w in self.workers])
        self.layout: list[dict] = []

    @property
    def world(self) -> int:
        return len(self.workers)

    def _get(self, refs: list) -> list:
        import ray
        from ray.exceptions import RayActorError

        try:
            return ray.get(refs)
        except RayActorError as e:
            dead = getattr(e, "actor_id", None)
            rank = next((i for i, w in enumerate(self.workers) if w._actor_id.hex() == dead), "?")
            raise WorkerDied(f"{self.role} worker rank {rank} died: {e}") from e

    def call(self, method: str, *args, **kwargs) -> list[Any]:
        """method(*args) on every rank; the answers by rank."""
        return self._get([getattr(w, method).remote(*args, **kwargs) for w in self.workers])

    def refresh_layout(self) -> None:
        """Each rank's {dp_rank, dp, collects}: how dp_call splits and where it reads answers."""
        self.layout = self.call("layout")

    def _scatter(self, method: str, batch: Batch, args, kwargs, weight_key: str):
        if not self.layout:
            self.refresh_layout()
        dp = self.layout[0]["dp"]
        padded, pad = batch.pad_to_multiple(dp)
        parts, indices = padded.split_balanced(dp, weight_key)
        refs = [getattr(w, method).remote(parts[info["dp_rank"]], *args, **kwargs)
                for w, info in zip(self.workers, self.layout)]
        answers = self._get(refs)
        by_dp = {info["dp_rank"]: a for a, info in zip(answers, self.layout) if info["collects"]}
        return [by_dp[d] for d in range(dp)], indices, pad

    def dp_call(self, method: str, batch: Batch, *args, weight_key: str = "lengths", **kwargs) -> Batch:
        """method(piece, *args) with each DP replica's piece of the batch; per-sample answers back in order."""
        answers, indices, pad = self._scatter(method, batch, args, kwargs, weight_key)
        return restore_order(answers, indices).unpad(pad)

    def dp_run(self, method: str, batch: Batch, *args, weight_key: str = "lengths", **kwargs) -> list[Any]:
        """Like dp_call for methods that answer something other than per-sample data (update metrics): the
        collecting rank's answer of each DP replica. The batch must split evenly (no padding for updates)."""
        if not self.layout:
            self.refresh_layout()
        if len(batch) % self.layout[0]["dp"]:
            raise ValueError(f"{len(batch)} samples do not split over {self.layout[0]['dp']} data-parallel ranks")
        return self._scatter(method, batch, args, kwargs, weight_key)[0]

    def kill(self, grace_s: float = 30.0) -> None:
        """Asks each actor to exit after its pending calls (a plain ray.kill sends SIGTERM, whose handler prints a
        traceback from whatever the worker was doing), then kills whatever is left."""
        import ray

        ray.wait([w.__ray_terminate__.remote() for w in self.workers], num_returns=len(self.workers),
                 timeout=grace_s)
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []
