"""Request-rate limits for tools that call shared services (a code sandbox, a retriever): one token bucket per
service URL. Within a Ray job the buckets are shared by every process (rlpost.cluster.shared_rate_limit plugs that
in), so N rollout workers together stay under the service's rate, not N times it; otherwise each process has its
own."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable


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


_local: dict[str, TokenBucket] = {}
_shared: Callable[[str, float, float], Awaitable[float | None]] | None = None


def share_buckets(reserve: Callable[[str, float, float], Awaitable[float | None]] | None) -> None:
    """Route shared limits through `reserve(key, rate, capacity) -> seconds to wait`, or None where it cannot share
    (then, and with `reserve` None, this process's own bucket)."""
    global _shared
    _shared = reserve


async def acquire(service_url: str, rate: float, capacity: float | None = None, shared: bool = True) -> None:
    """Waits for this request's turn at `service_url`."""
    capacity = capacity or rate
    key = hashlib.sha1(f"{service_url}|{rate}|{capacity}".encode()).hexdigest()[:16]
    wait = await _shared(key, rate, capacity) if shared and _shared is not None else None
    if wait is None:
        wait = _local.setdefault(key, TokenBucket(rate, capacity)).reserve()
    if wait > 0:
        await asyncio.sleep(wait)
