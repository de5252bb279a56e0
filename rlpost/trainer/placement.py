"""Where the roles run. Colocated: one pool; each device hosts actor (+ reference, + critic) and, on the first rank
of each inference replica, a rollout engine. Split: training devices and rollout devices form separate pools; one
server per infer_tp rollout devices. Either way the training workers then connect their weight sync to the engines."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlpost.cluster.resources import ResourcePool
from rlpost.cluster.worker_group import WorkerGroup
from rlpost.config.derived import rollout_devices, training_devices
from rlpost.config.schema import RLConfig
from rlpost.workers.rollout import RolloutWorker
from rlpost.workers.train_worker import TrainWorker


@dataclass
class Placement:
    train: WorkerGroup
    server_urls: list[str]
    split: bool
    rollout: WorkerGroup | None = None
    pools: list[ResourcePool] = field(default_factory=list)

    def shutdown(self) -> None:
        for group in (self.train, self.rollout):
            if group is not None and group.workers:
                try:
                    group.call("shutdown")
                finally:
                    group.kill()
        for pool in self.pools:
            pool.remove()


def _pool(name: str, devices: int, n_nodes: int, per_bundle: int = 1) -> ResourcePool:
    bundles = devices // per_bundle
    nodes = n_nodes if bundles % n_nodes == 0 else 1
    return ResourcePool(name, nodes, bundles // nodes, per_bundle).create()


def place(cfg: RLConfig, model_dirs: dict[str, str], total_steps: int, roles: list[str], context_length: int,
          log_dir: str) -> Placement:
    c = cfg.cluster
    split = c.placement == "split"
    train_pool = _pool("train", training_devices(cfg), 1 if split else c.n_nodes)
    train = WorkerGroup(TrainWorker, train_pool, "train", cfg, model_dirs, total_steps, roles)
    placement = Placement(train, [], split, pools=[train_pool])
    try:
        train.layout = train.call("setup")
        if split:
            rollout_pool = _pool("rollout", rollout_devices(cfg), 1, cfg.rollout.infer_tp)
            placement.pools.append(rollout_pool)
            placement.rollout = WorkerGroup(RolloutWorker, rollout_pool, "rollout", model_dirs["actor"], cfg.rollout,
                                            context_length, cfg.trainer.seed, log_dir)
            placement.server_urls = placement.rollout.call("url")
        else:
            placement.server_urls = [u for u in train.call("start_engine", context_length) if u is not None]
        train.call("connect_rollout", placement.server_urls if split else None)
    except BaseException:
        placement.shutdown()
        raise
    return placement
