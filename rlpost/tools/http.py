"""Tools that call a shared HTTP service: retries, a cap on requests in flight per process and the job-wide rate
limit."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from rlpost.tools.base import BaseTool, tool_config
from rlpost.tools.rate_limit import acquire, in_flight
from rlpost.tools.schema import ToolSchema

RETRIED_STATUSES = {408, 429, 500, 502, 503, 504}


class ServiceError(RuntimeError):
    pass


async def post_json(url: str, body: dict, timeout_s: float, retries: int, retry_delay_s: float,
                    before_each: Callable[[], Awaitable[None]] | None = None, retry_timeouts: bool = True) -> dict:
    """The JSON object `url` answers. Connection failures, HTTP 408/429/5xx and (with `retry_timeouts`) timeouts are
    retried with exponential backoff, each attempt waiting its turn with `before_each` (the rate limit); any other
    non-200 answer is final. Code execution is not retried after a timeout: the service may still be running it."""
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(retry_delay_s * 2 ** (attempt - 1))
        if before_each is not None:
            await before_each()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
                async with session.post(url, json=body) as response:
                    if response.status == 200:
                        try:
                            answer = await response.json(content_type=None)
                        except ValueError as e:
                            raise ServiceError(f"{url} answered with something that is not JSON: {e}") from e
                        if not isinstance(answer, dict):
                            raise ServiceError(f"{url} answered {str(answer)[:200]}, not a JSON object")
                        return answer
                    text = (await response.text())[:500]
                    if response.status not in RETRIED_STATUSES:
                        raise ServiceError(f"{url} answered HTTP {response.status}: {text}")
                    last = f"HTTP {response.status}: {text}"
        except asyncio.TimeoutError:
            last = f"no answer within {timeout_s:g} s"
            if not retry_timeouts:
                raise ServiceError(f"{url}: {last}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    raise ServiceError(f"{url}: no answer after {retries + 1} attempt(s); last: {last}")


SERVICE_DEFAULTS = {"num_workers": 10, "rate_limit": 10, "enable_global_rate_limit": True,
                    "requests_per_second": None, "max_retries": 3, "retry_delay_s": 1.0}


class ServiceTool(BaseTool):
    """verl's meanings: `rate_limit` requests in flight for the whole job (this process alone without
    `enable_global_rate_limit`), `num_workers` in flight per process. rlpost's `requests_per_second` (null: none) also
    paces them, job-wide likewise. Failed requests are retried `max_retries` times."""

    URL_KEY = ""
    DEFAULTS: dict[str, Any] = {}
    RETRY_TIMEOUTS = True
    # key -> (check, what it must be); subclasses add theirs
    CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
        "num_workers": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        "rate_limit": (lambda v: is_int(v) and v >= 1, "an integer >= 1 (requests in flight for the job)"),
        "requests_per_second": (lambda v: v is None or (is_number(v) and v > 0), "null or a number > 0"),
        "max_retries": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        "retry_delay_s": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    }

    def __init__(self, config: dict, tool_schema: ToolSchema | None):
        super().__init__(config, tool_schema)
        self.settings = tool_config(config, {**SERVICE_DEFAULTS, **self.DEFAULTS}, f"tool '{self.name}'")
        for key, (ok, expected) in {**ServiceTool.CHECKS, **self.CHECKS}.items():
            if not ok(self.settings[key]):
                raise ValueError(f"tool '{self.name}': {key} must be {expected}, got {self.settings[key]!r}")
        self.url = self.settings[self.URL_KEY]
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"tool '{self.name}': {self.URL_KEY} must be an http(s) URL, got {self.url!r}")
        self._slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def post(self, body: dict, timeout_s: float) -> dict:
        loop = asyncio.get_running_loop()
        slots = self._slots.setdefault(loop, asyncio.Semaphore(self.settings["num_workers"]))
        s = self.settings
        async with slots, in_flight(self.url, s["rate_limit"], shared=s["enable_global_rate_limit"]):
            return await post_json(self.url, body, timeout_s, s["max_retries"], s["retry_delay_s"],
                                   self._turn if s["requests_per_second"] else None, self.RETRY_TIMEOUTS)

    async def _turn(self) -> None:
        s = self.settings
        await acquire(self.url, s["requests_per_second"], shared=s["enable_global_rate_limit"])


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
