"""Deliver resharded buckets to an inference engine: in-process (colocated embedded engine), HTTP
(/update_weights_from_tensor, same host), or a torch.distributed broadcast (/update_weights_from_distributed, split
pools). Every push carries the weight version; the prefix cache is flushed with the last bucket only, so requests
never mix cached keys/values of two versions while the update runs. A push to servers runs inside one weight-update
session (WeightServers.session), which SGLang requires.

Synchronous on purpose: resharding runs in the training worker's thread, bucket after bucket.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator

import torch

from rlpost.protocol.weight_group import broadcast, join, leave
from rlpost.resharding.servers import WeightServers

Bucket = list[tuple[str, torch.Tensor]]


def with_last(buckets: Iterable[Bucket]) -> Iterator[tuple[Bucket, bool]]:
    """Each bucket with whether it is the final one (one bucket of look-ahead)."""
    iterator = iter(buckets)
    previous = next(iterator, None)
    for bucket in iterator:
        yield previous, False
        previous = bucket
    if previous is not None:
        yield previous, True


def push_buckets(buckets: Iterable[Bucket], transport, version: str) -> int:
    """Send every bucket, in one session of the transport; returns how many tensors went."""
    count = 0
    with transport.session():
        for bucket, last in with_last(buckets):
            transport.push(bucket, last, version)
            count += len(bucket)
    return count


class EngineTransport:
    """The embedded engine in this process: buckets go straight into its weights between steps."""

    def __init__(self, engine):
        self.engine = engine

    def session(self):
        """None needed: the engine loads between its own steps."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Nothing to release: the engine belongs to its host."""

    def push(self, bucket: Bucket, last: bool, version: str) -> None:
        self.engine.call(lambda: self.engine.load_weights(bucket, flush_cache=last, weight_version=version)).result()


class HTTPTransport:
    """Servers on this host: tensors travel as shared-memory handles (SGLang's update_weights_from_tensor)."""

    def __init__(self, servers: WeightServers):
        self.servers = servers

    def session(self):
        return self.servers.session()

    def close(self) -> None:
        """Nothing to release: every request stands alone."""

    def push(self, bucket: Bucket, last: bool, version: str) -> None:
        # copies: serialising moves a CPU tensor's storage into shared memory, and bucket tensors may be the
        # trainer's own parameters (replicated ones pass through unchanged)
        self.servers.update_from_tensor([(n, t.clone()) for n, t in bucket], last, version)


class BroadcastTransport:
    """Servers in another pool: this process is rank 0 of a group the servers join (NCCL between GPUs, gloo on
    CPUs, named in the request as SGLang expects), and broadcasts each tensor while the HTTP call that announces it
    is in flight. The group's name is unique to this transport, so a process can hold several; close frees it on
    both ends."""

    def __init__(self, servers: WeightServers, master_address: str, master_port: int, backend: str,
                 group_name: str | None = None):
        self.servers = servers
        self.group_name = group_name or f"rlpost-weights-{uuid.uuid4().hex[:12]}"
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        world = servers.group_size()
        _, self.group = _together(
            lambda: servers.init_group(master_address, master_port, self.group_name, backend),
            lambda: join(master_address, master_port, 0, world, self.group_name, backend))

    def session(self):
        return self.servers.session()

    def close(self) -> None:
        try:
            self.servers.destroy_group(self.group_name)
        finally:
            leave(self.group)

    def push(self, bucket: Bucket, last: bool, version: str) -> None:
        def send() -> None:
            for _, tensor in bucket:
                broadcast(self.group, tensor.to(self.device).contiguous())

        _together(lambda: self.servers.update_from_distributed(bucket, self.group_name, last, version), send)


def _together(*calls: Callable) -> list:
    """Run the calls at once (an HTTP request and the collective it pairs with); their results, or the first
    failure as soon as it happens: a server that refuses must not leave the trainer waiting in the collective until
    its timeout. An abandoned call ends with that timeout on its daemon thread."""
    results: list = [None] * len(calls)
    finished: queue.Queue = queue.Queue()

    def run(i: int, call: Callable) -> None:
        try:
            results[i] = call()
            finished.put(None)
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
            finished.put(e)

    for i, call in enumerate(calls):
        threading.Thread(target=run, args=(i, call), daemon=True).start()
    for _ in calls:
        error = finished.get()
        if error is not None:
            raise error
    return results
