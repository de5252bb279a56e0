"""Request-rate limits for tools that call shared services (a code sandbox, a retriever). The bucket is one per
service URL for the whole job: with Ray running it lives in a named Ray actor that every worker's tools share, so N
rollout workers together stay under the service's rate, not N times it."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time


class TokenBucket:
    """`rate` requests per second on average, bursts of up to `capacity`. A caller takes its token at once and is told
    how long to wait for it, so one call (one RPC for the shared bucket) admits one request."""

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
_shared: dict[tuple[str, str], object] = {}


def _shared_bucket(name: str, rate: float, capacity: float):
    """The job's named bucket actor (the first caller creates it; it ends with the job)."""
    import ray

    key = (ray.get_runtime_context().get_job_id(), name)
    if key not in _shared:
        actor = ray.remote(num_cpus=0)(TokenBucket)
        _shared[key] = actor.options(name=name, get_if_exists=True).remote(rate, capacity)
    return _shared[key]


async def acquire(service_url: str, rate: float, capacity: float | None = None, shared: bool = True) -> None:
    """Waits for this request's turn at `service_url`: across the Ray job when `shared` and Ray is running, else
    within this process."""
    capacity = capacity or rate
    key = hashlib.sha1(f"{service_url}|{rate}|{capacity}".encode()).hexdigest()[:16]
    wait = None
    if shared:
        import ray

        if ray.is_initialized():
            wait = await _shared_bucket(f"rlpost-rate-limit-{key}", rate, capacity).reserve.remote()
    if wait is None:
        wait = _local.setdefault(key, TokenBucket(rate, capacity)).reserve()
    if wait > 0:
        await asyncio.sleep(wait)
