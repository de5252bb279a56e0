"""Weight sync as one object: the actor's weights -> the rollout engines after each update. It owns the HybridFlow
plan's process groups, the bucketing and the transport; a training worker builds one and calls push.

Every rank builds its inference shard inside its micro-DP group; with infer_tp > 1 an inference replica gathers full
tensors (what a server loads). Colocated, each replica's first rank loads them into the engine it hosts; split,
replica 0's first rank broadcasts them to every rollout server, the other replicas only take part in their groups.
"""

from __future__ import annotations

import torch

from rlpost.models.weights import ModelDims
from rlpost.net import free_port
from rlpost.resharding.plan import ReshardPlan
from rlpost.resharding.servers import WeightServers
from rlpost.resharding.transfer import full_buckets, inference_buckets, make_groups
from rlpost.resharding.transports import BroadcastTransport, EngineTransport, push_buckets


class WeightSync:
    def __init__(self, plan: ReshardPlan, rank: int, *, dims: ModelDims, spec: str, dtype: torch.dtype,
                 bucket_bytes: int, engine=None, server_urls: list[str] | None = None, address: str = "127.0.0.1",
                 backend: str = "gloo"):
        """Collective: every rank of the training group builds one, in the same order. Colocated: `engine` is the
        embedded engine this rank hosts (None where it hosts none). Split: `server_urls` are the rollout servers,
        joined into a weight-update group with `backend` (rlpost.protocol.weight_group.backend_for) hosted at
        `address`."""
        self.plan, self.rank, self.dims, self.spec, self.dtype = plan, rank, dims, spec, dtype
        self.bucket_bytes = bucket_bytes
        self.groups, self.replica_groups = make_groups(plan), make_groups(plan, replicas=True)
        replica, position = plan.inference_position(rank)
        feeds = server_urls is None or replica == 0
        self.gathers = feeds and plan.infer_tp > 1
        self.transport = None
        if feeds and position == 0 and server_urls is not None:
            self.transport = BroadcastTransport(WeightServers(server_urls), address, free_port(), backend)
        elif feeds and position == 0 and engine is not None:
            self.transport = EngineTransport(engine)

    def push(self, params: dict[str, torch.Tensor], version: str) -> int:
        """This rank's part of one sync (every rank must call it); returns the tensors this rank delivered."""
        buckets = inference_buckets(self.plan, self.rank, params, self.dims, self.groups, self.bucket_bytes,
                                    self.dtype, spec=self.spec)
        if self.gathers:
            buckets = full_buckets(self.plan, self.rank, buckets, self.dims, self.replica_groups)
        if self.transport is None:
            for _ in buckets:  # this rank's part in its groups' collectives
                pass
            return 0
        return push_buckets(buckets, self.transport, version)

    def close(self) -> None:
        """Frees the weight-update group on both ends (split placement)."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None
