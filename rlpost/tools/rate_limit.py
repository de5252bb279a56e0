"""Limits for tools that call shared services (a code sandbox, a retriever), per service:
- `in_flight`: at most `limit` requests at a time (verl's `rate_limit`: a semaphore);
- `acquire`: at most `rate` requests per second, bursts of `capacity` (rlpost's `requests_per_second`: a token
  bucket).
Within a Ray job both are shared by every process (rlpost.cluster.shared_rate_limit plugs that in), so N rollout
workers together stay under the service's limit, not N times it; otherwise each process has its own."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol


class Slots(Protocol):
    async def acquire(self) -> None: ...

    async def release(self) -> None: ...


class TokenBucket:
    """`rate` requests per second on average, bursts of up to `capacity`. A caller takes its token at once and is told
    how long to wait for it, so one call (one RPC for a shared bucket) admits one request."""

    def __init__(self, rate: float, capacity: float | None = None, clock=time.monotonic):
        if rate <= 0:
            raise ValueError(f"rate limit must be positive (requests per second), got {rate}")
        self.rate, self.capacity, self.clock = float(rate), float(capacity or rate), clock
        self.tokens, self.stamp = self.capacity, clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Seconds until the caller's token is due (0 when one is available now)."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= 1.0
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class LocalSlots:
    """This process's semaphore (one per event loop: an asyncio semaphore belongs to its loop)."""

    def __init__(self, limit: int):
        self._semaphore = asyncio.Semaphore(limit)

    async def acquire(self) -> None:
        await self._semaphore.acquire()

    async def release(self) -> None:
        self._semaphore.release()


_local: dict[str, TokenBucket] = {}
_local_slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> {key: its semaphore}
_shared: Callable[[str, float, float], Awaitable[float | None]] | None = None
_shared_slots: Callable[[str, int], Awaitable[Slots | None]] | None = None


def share_buckets(reserve: Callable[[str, float, float], Awaitable[float | None]] | None,
                  slots: Callable[[str, int], Awaitable[Slots | None]] | None = None) -> None:
    """Route shared limits through `reserve(key, rate, capacity) -> seconds to wait` and `slots(key, limit) ->
    the job's semaphore`, either answering None where it cannot share (then, and with None here, this process's
    own)."""
    global _shared, _shared_slots
    _shared, _shared_slots = reserve, slots


def _key(*parts) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


async def acquire(service_url: str, rate: float, capacity: float | None = None, shared: bool = True) -> None:
    """Waits for this request's turn at `service_url` under a requests-per-second limit."""
    capacity = capacity or rate
    key = _key(service_url, rate, capacity)
    wait = await _shared(key, rate, capacity) if shared and _shared is not None else None
    if wait is None:
        wait = _local.setdefault(key, TokenBucket(rate, capacity)).reserve()
    if wait > 0:
        await asyncio.sleep(wait)


@asynccontextmanager
async def in_flight(service_url: str, limit: int, shared: bool = True) -> AsyncIterator[None]:
    """Holds one of `limit` slots at `service_url` while the request runs."""
    key = _key(service_url, "in-flight", limit)
    slots = await _shared_slots(key, limit) if shared and _shared_slots is not None else None
    if slots is None:
        slots = _local_slots.setdefault(asyncio.get_running_loop(), {}).setdefault(key, LocalSlots(limit))
    await slots.acquire()
    try:
        yield
    finally:
        await slots.release()
