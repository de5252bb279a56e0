"""The job-wide side of tools' rate limits: each service's token bucket lives in a named Ray actor, so every process
of the job (the driver, rollout workers) draws from the same bucket. `share_rate_limits()` plugs it into
rlpost.tools.rate_limit, which itself never imports Ray."""

from __future__ import annotations

from rlpost.tools import rate_limit
from rlpost.tools.rate_limit import TokenBucket

_handles: dict[tuple[str, str], object] = {}


async def _reserve(key: str, rate: float, capacity: float) -> float | None:
    import ray

    if not ray.is_initialized():
        return None  # the job has ended: this process's own bucket
    name = f"rlpost-rate-limit-{key}"
    handle_key = (ray.get_runtime_context().get_job_id(), name)
    if handle_key not in _handles:  # the first caller creates the bucket; it ends with the job
        actor = ray.remote(num_cpus=0)(TokenBucket)
        _handles[handle_key] = actor.options(name=name, get_if_exists=True).remote(rate, capacity)
    return await _handles[handle_key].reserve.remote()


def share_rate_limits() -> None:
    """Call in each process that runs tools, once Ray is connected."""
    rate_limit.share_buckets(_reserve)
