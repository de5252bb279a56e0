"""Tools that call a shared HTTP service: retries, a cap on requests in flight per process and the job-wide rate
limit."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Awaitable, Callable

import aiohttp

from rlpost.tools.base import BaseTool, tool_config
from rlpost.tools.rate_limit import acquire
from rlpost.tools.schema import ToolSchema

RETRIED_STATUSES = {408, 429, 500, 502, 503, 504}


class ServiceError(RuntimeError):
    pass


async def post_json(url: str, body: dict, timeout_s: float, retries: int, retry_delay_s: float,
                    before_each: Callable[[], Awaitable[None]] | None = None) -> dict:
    """The JSON answer of `url`. Connection failures, timeouts and HTTP 408/429/5xx are retried with exponential
    backoff (each attempt waits its turn with `before_each`, the rate limit); any other non-200 answer is final."""
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
                        return await response.json(content_type=None)
                    text = (await response.text())[:500]
                    if response.status not in RETRIED_STATUSES:
                        raise ServiceError(f"{url} answered HTTP {response.status}: {text}")
                    last = f"HTTP {response.status}: {text}"
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as e:
            last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    raise ServiceError(f"{url}: no answer after {retries + 1} attempt(s); last: {last}")


SERVICE_DEFAULTS = {"num_workers": 10, "rate_limit": 10, "enable_global_rate_limit": True, "max_retries": 3,
                    "retry_delay_s": 1.0}


class ServiceTool(BaseTool):
    """`num_workers` requests in flight per process; `rate_limit` requests per second for the whole job (verl's tools
    read it as a count in flight); failed requests retried `max_retries` times."""

    URL_KEY = ""
    DEFAULTS: dict[str, Any] = {}

    def __init__(self, config: dict, tool_schema: ToolSchema | None):
        super().__init__(config, tool_schema)
        self.settings = tool_config(config, {**SERVICE_DEFAULTS, **self.DEFAULTS}, f"tool '{self.name}'")
        self.url = self.settings[self.URL_KEY]
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"tool '{self.name}': {self.URL_KEY} must be an http(s) URL, got {self.url!r}")
        self._slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def post(self, body: dict, timeout_s: float) -> dict:
        loop = asyncio.get_running_loop()
        slots = self._slots.setdefault(loop, asyncio.Semaphore(self.settings["num_workers"]))
        async with slots:
            return await post_json(self.url, body, timeout_s, self.settings["max_retries"],
                                   self.settings["retry_delay_s"], self._turn)

    async def _turn(self) -> None:
        await acquire(self.url, self.settings["rate_limit"], shared=self.settings["enable_global_rate_limit"])
