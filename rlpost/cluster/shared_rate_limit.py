"""The job-wide side of tools' limits: each service's token bucket (requests per second) and semaphore (requests in
flight) live in named Ray actors, so every process of the job (the driver, rollout workers) draws from the same ones.
`share_rate_limits()` plugs them into rlpost.tools.rate_limit, which itself never imports Ray."""

from __future__ import annotations

import asyncio

from rlpost.tools import rate_limit
from rlpost.tools.rate_limit import TokenBucket

_handles: dict[tuple[str, str], object] = {}
_pending: set[asyncio.Future] = set()


def _actor(cls: type, name: str, *args):
    """The job's actor of that name, created by the first caller; it ends with the job."""
    import ray

    handle_key = (ray.get_runtime_context().get_job_id(), name)
    if handle_key not in _handles:
        _handles[handle_key] = ray.remote(num_cpus=0)(cls).options(name=name, get_if_exists=True).remote(*args)
    return _handles[handle_key]


async def _reserve(key: str, rate: float, capacity: float) -> float | None:
    import ray

    if not ray.is_initialized():
        return None  # the job has ended: this process's own bucket
    return await _actor(TokenBucket, f"rlpost-rate-limit-{key}", rate, capacity).reserve.remote()


class Semaphore:
    """Counted slots in an async actor: an acquire waits in the actor until a slot is free."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._free: asyncio.Condition | None = None

    async def acquire(self) -> None:
        self._free = self._free or asyncio.Condition()
        async with self._free:
            await self._free.wait_for(lambda: self.used < self.limit)
            self.used += 1

    async def release(self) -> None:
        async with self._free:
            self.used -= 1
            self._free.notify()

    def in_use(self) -> int:
        return self.used


class RemoteSlots:
    """A process's handle on the job's semaphore. A caller cancelled while waiting (a tool timeout) releases the slot
    once the actor grants it, so cancellations do not leak slots."""

    def __init__(self, actor):
        self.actor = actor

    async def acquire(self) -> None:
        granted = self.actor.acquire.remote()
        try:
            await granted
        except asyncio.CancelledError:
            handing_back = asyncio.ensure_future(self._release_when(granted))
            _pending.add(handing_back)  # held until done: the loop keeps only weak references to tasks
            handing_back.add_done_callback(_pending.discard)
            raise

    async def _release_when(self, granted) -> None:
        await granted
        await self.release()

    async def release(self) -> None:
        await self.actor.release.remote()


async def _slots(key: str, limit: int) -> RemoteSlots | None:
    import ray

    if not ray.is_initialized():
        return None
    return RemoteSlots(_actor(Semaphore, f"rlpost-in-flight-{key}", limit))


def share_rate_limits() -> None:
    """Call in each process that runs tools, once Ray is connected."""
    rate_limit.share_buckets(_reserve, _slots)
