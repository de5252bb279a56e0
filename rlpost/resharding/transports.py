"""Deliver resharded buckets to an inference engine: in-process (colocated embedded engine), HTTP
(/update_weights_from_tensor, same host), or a torch.distributed broadcast (/update_weights_from_distributed, split
pools). Every push carries the weight version; the prefix cache is flushed with the last bucket only, so requests
never mix cached keys/values of two versions while the update runs.

Synchronous on purpose: resharding runs in the training worker's thread, bucket after bucket.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Iterable, Iterator

import torch

from rlpost.rollout.client import SGLangClient
from rlpost.rollout.engine.weight_group import broadcast, new_group

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


def _call(urls: list[str], method: str, *args, timeout_s: float, **kwargs):
    """One SGLangClient call from synchronous code (its own event loop and session)."""
    async def call():
        async with SGLangClient(urls, timeout_s=timeout_s) as client:
            return await getattr(client, method)(*args, **kwargs)

    return asyncio.run(call())


class EngineTransport:
    """The embedded engine in this process: buckets go straight into its weights between steps."""

    def __init__(self, engine):
        self.engine = engine

    def push(self, bucket: Bucket, last: bool, version: str) -> None:
        self.engine.call(lambda: self.engine.load_weights(bucket, flush_cache=last, weight_version=version)).result()


class HTTPTransport:
    """A server on this host: tensors travel as shared-memory handles (SGLang's update_weights_from_tensor)."""

    def __init__(self, url: str, timeout_s: float = 600.0):
        self.url, self.timeout_s = url, timeout_s

    def push(self, bucket: Bucket, last: bool, version: str) -> None:
        # copies: serialising moves a CPU tensor's storage into shared memory, and bucket tensors may be the
        # trainer's own parameters (replicated ones pass through unchanged)
        _call([self.url], "update_weights_from_tensor", [(n, t.clone()) for n, t in bucket], flush_cache=last,
              weight_version=version, timeout_s=self.timeout_s)


class BroadcastTransport:
    """Servers in another pool: this process is rank 0 of a gloo group the servers join, and broadcasts each
    tensor while the HTTP call that announces it is in flight."""

    def __init__(self, urls: list[str], master_address: str, master_port: int, group_name: str = "weight_update_group",
                 timeout_s: float = 600.0):
        self.urls, self.group_name, self.timeout_s = urls, group_name, timeout_s
        world = _call(urls, "weight_group_size", timeout_s=timeout_s)
        joined = _in_thread(_call, urls, "init_weights_update_group", master_address, master_port,
                            world_size=world, group_name=group_name, timeout_s=timeout_s)
        self.group, self._store = new_group(master_address, master_port, 0, world, group_name)
        joined()

    def push(self, bucket: Bucket, last: bool, version: str) -> None:
        announced = _in_thread(
            _call, self.urls, "update_weights_from_distributed", [n for n, _ in bucket],
            [str(t.dtype).removeprefix("torch.") for _, t in bucket], [list(t.shape) for _, t in bucket],
            group_name=self.group_name, flush_cache=last, weight_version=version, timeout_s=self.timeout_s)
        for _, tensor in bucket:
            broadcast(self.group, tensor.contiguous())
        announced()


def _in_thread(fn, *args, **kwargs):
    """Start fn on a thread; the returned function joins it and re-raises what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller's join
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()

    def join() -> None:
        thread.join()
        if errors:
            raise errors[0]

    return join


def push_buckets(buckets: Iterable[Bucket], transport, version: str) -> int:
    """Send every bucket; returns how many tensors went."""
    count = 0
    for bucket, last in with_last(buckets):
        transport.push(bucket, last, version)
        count += len(bucket)
    return count
