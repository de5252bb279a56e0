"""Async client for SGLang-protocol servers (SGLang itself or rlpost's embedded engine).

One pooled HTTP session for all servers; requests go to the server with the fewest outstanding requests, except that
a conversation (session id) sticks to the server that holds its prefix cache. Failures to connect are retried with
exponential backoff (the request never arrived, so nothing runs twice); a server that stays unreachable is skipped
for a while. A dropped connection or a timeout mid-request is not retried, and HTTP errors raise ServerError with
the server's message. Memory and flow-control calls go to every server; weight pushes are the resharder's
(rlpost.resharding.servers).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from rlpost.protocol.wire import ServerError, decode_body, error_message

log = logging.getLogger(__name__)
# only failures to connect: the request never reached the server, so sending it again cannot duplicate work
_RETRYABLE = (aiohttp.ClientConnectorError,)
_HEALTH_ERRORS = (aiohttp.ClientConnectionError, asyncio.TimeoutError)
_UNHEALTHY_FOR_S = 30.0


@dataclass
class _Server:
    url: str
    outstanding: int = 0
    down_since: float | None = None  # set when unreachable; the server is tried again after _UNHEALTHY_FOR_S

    @property
    def healthy(self) -> bool:
        return self.down_since is None or time.monotonic() - self.down_since > _UNHEALTHY_FOR_S


class SGLangClient:
    def __init__(self, urls: list[str], timeout_s: float = 3600.0, connect_timeout_s: float = 10.0,
                 max_retries: int = 3, backoff_s: float = 0.5, max_connections: int = 1024,
                 max_sessions: int = 100_000):
        if not urls:
            raise ValueError("SGLangClient needs at least one server URL")
        self.servers = [_Server(u.rstrip("/")) for u in urls]
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.max_connections, self.max_sessions = max_connections, max_sessions
        self._sticky: OrderedDict[str, _Server] = OrderedDict()
        self._round = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SGLangClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- routing -------------------------------------------------------------------------------------------------

    def pick(self, session_id: str | None = None) -> _Server:
        if session_id is not None and session_id in self._sticky and self._sticky[session_id].healthy:
            self._sticky.move_to_end(session_id)
            return self._sticky[session_id]
        healthy = [s for s in self.servers if s.healthy] or self.servers
        fewest = min(s.outstanding for s in healthy)
        candidates = [s for s in healthy if s.outstanding == fewest]
        server = candidates[next(self._round) % len(candidates)]
        if session_id is not None:
            self._sticky[session_id] = server
            if len(self._sticky) > self.max_sessions:
                self._sticky.popitem(last=False)
        return server

    def end_session(self, session_id: str) -> None:
        self._sticky.pop(session_id, None)

    # ---- transport -----------------------------------------------------------------------------------------------

    async def request(self, server: _Server | str, path: str, payload: dict | None = None,
                      method: str = "POST") -> Any:
        """One call with retries on connection errors; the JSON answer (or text, or None for an empty body)."""
        server = server if isinstance(server, _Server) else self._server(server)
        server.outstanding += 1
        try:
            for attempt in range(self.max_retries + 1):
                try:
                    async with self.session.request(method, server.url + path, json=payload) as response:
                        body = await response.read()
                        if response.status >= 400:
                            raise ServerError(server.url, path, response.status, error_message(body))
                        server.down_since = None
                        return decode_body(body)
                except _RETRYABLE as e:
                    if attempt == self.max_retries:
                        server.down_since = time.monotonic()
                        raise ConnectionError(f"{server.url}{path} unreachable after {attempt + 1} tries: "
                                              f"{type(e).__name__}: {e}") from e
                    delay = self.backoff_s * 2 ** attempt
                    log.warning("%s%s: %s; retrying in %.1fs", server.url, path, type(e).__name__, delay)
                    await asyncio.sleep(delay)
        finally:
            server.outstanding -= 1

    def _server(self, url: str) -> _Server:
        url = url.rstrip("/")
        for s in self.servers:
            if s.url == url:
                return s
        raise ValueError(f"'{url}' is not one of this client's servers: {[s.url for s in self.servers]}")

    async def broadcast(self, path: str, payload: dict | None = None, method: str = "POST") -> list[Any]:
        return list(await asyncio.gather(*(self.request(s, path, payload, method) for s in self.servers)))

    async def wait_healthy(self, timeout_s: float = 600.0, interval_s: float = 0.5) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(self.servers)
        while pending:
            still = []
            for server in pending:
                try:
                    async with self.session.get(server.url + "/health",
                                                timeout=aiohttp.ClientTimeout(total=5)) as response:
                        if response.status != 200:
                            still.append(server)
                except _HEALTH_ERRORS:
                    still.append(server)
            pending = still
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"servers not healthy after {timeout_s:.0f}s: {[s.url for s in pending]}")
            if pending:
                await asyncio.sleep(interval_s)
        for server in self.servers:
            server.down_since = None

    # ---- generation ----------------------------------------------------------------------------------------------

    async def generate(self, input_ids: list[int] | list[list[int]] | None = None,
                       sampling_params: dict | list[dict] | None = None, *,
                       text: str | None = None, return_logprob: bool = False, session_id: str | None = None,
                       **fields) -> dict | list[dict]:
        payload = {"sampling_params": sampling_params or {}, "return_logprob": return_logprob, **fields}
        payload.update({"input_ids": input_ids} if text is None else {"text": text})
        return await self.request(self.pick(session_id), "/generate", payload)

    async def generate_stream(self, input_ids: list[int], sampling_params: dict | None = None, *,
                              session_id: str | None = None, **fields) -> AsyncIterator[dict]:
        """Yields each streamed chunk; a dropped connection is not retried (tokens were already delivered). An error
        after the stream opened arrives as a `data: {"error": ...}` chunk (SGLang checks a streamed request there)
        and raises ServerError."""
        server = self.pick(session_id)
        payload = {"input_ids": input_ids, "sampling_params": sampling_params or {}, "stream": True, **fields}
        server.outstanding += 1
        try:
            async with self.session.post(server.url + "/generate", json=payload) as response:
                if response.status >= 400:
                    raise ServerError(server.url, "/generate", response.status, error_message(await response.read()))
                async for line in response.content:
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    chunk = json.loads(data)
                    if isinstance(chunk, dict) and "error" in chunk:
                        error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk["error"]}
                        raise ServerError(server.url, "/generate", int(error.get("code") or response.status),
                                          str(error.get("message")))
                    yield chunk
        finally:
            server.outstanding -= 1

    async def chat(self, messages: list[dict], *, session_id: str | None = None, **fields) -> dict:
        return await self.request(self.pick(session_id), "/v1/chat/completions", {"messages": messages, **fields})

    async def abort(self, rid: str | None = None) -> None:
        await self.broadcast("/abort_request", {"rid": rid or "", "abort_all": rid is None})

    # ---- memory and flow control --------------------------------------------------------------------------------

    async def release_memory(self, tags: list[str] | None = None) -> None:
        await self.broadcast("/release_memory_occupation", {"tags": tags})

    async def resume_memory(self, tags: list[str] | None = None) -> None:
        await self.broadcast("/resume_memory_occupation", {"tags": tags})

    async def pause(self, mode: str = "abort") -> None:
        await self.broadcast("/pause_generation", {"mode": mode})

    async def resume(self) -> None:
        await self.broadcast("/continue_generation", {})

    async def flush_cache(self) -> None:
        await self.broadcast("/flush_cache", {})
