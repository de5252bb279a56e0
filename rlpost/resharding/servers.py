"""The rollout servers' weight endpoints of SGLang's HTTP API, called synchronously from the resharder's thread (each
call runs its own event loop and session: a push is a handful of large requests, not a hot path).

SGLang (0.5.23) loads weights from tensors or a broadcast only inside a weight-update session
(/begin_weight_update ... /end_weight_update) and answers 400 outside one; `session` opens and always closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

import aiohttp
import torch

from rlpost.dtypes import dtype_name
from rlpost.protocol.wire import ServerError, decode_body, error_message, serialize_named_tensors

log = logging.getLogger(__name__)


class WeightServers:
    def __init__(self, urls: list[str], timeout_s: float = 600.0):
        if not urls:
            raise ValueError("WeightServers needs at least one server URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout_s = timeout_s
        self._tp_sizes: list[int] | None = None

    def _request(self, calls: list[tuple[str, str, dict | None]]) -> list[Any]:
        """(url, path, JSON payload or None for GET) concurrently; the decoded answers, or ServerError."""
        async def one(session, url, path, payload):
            method = session.get(url + path) if payload is None else session.post(url + path, json=payload)
            async with method as response:
                body = await response.read()
                if response.status >= 400:
                    raise ServerError(url, path, response.status, error_message(body))
                return decode_body(body)

        async def run():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as session:
                return await asyncio.gather(*(one(session, *call) for call in calls))

        return asyncio.run(run())

    def _update(self, path: str, payloads: list[dict]) -> list[dict]:
        results = self._request([(url, path, p) for url, p in zip(self.urls, payloads, strict=True)])
        failed = [(url, r) for url, r in zip(self.urls, results) if not (isinstance(r, dict) and r.get("success"))]
        if failed:
            raise RuntimeError(f"weight update failed at {failed[0][0]}{path}: {failed[0][1]}")
        return results

    def tp_sizes(self) -> list[int]:
        """Each server's tensor-parallel size: weight updates address every TP rank of a server."""
        if self._tp_sizes is None:
            infos = self._request([(url, "/server_info", None) for url in self.urls])
            self._tp_sizes = [int(info["tp_size"]) for info in infos]
        return self._tp_sizes

    def group_size(self) -> int:
        """Ranks of the weight-update group: the trainer plus every TP rank of every server."""
        return 1 + sum(self.tp_sizes())

    @contextlib.contextmanager
    def session(self):
        """A weight-update session on every server around the body, closed whether or not the body succeeds (a
        failure to close after a failed body is logged, not raised over the body's error)."""
        self._update("/begin_weight_update", [{}] * len(self.urls))
        try:
            yield
        except BaseException:
            try:
                self._update("/end_weight_update", [{}] * len(self.urls))
            except Exception as e:  # noqa: BLE001 - the body's error is the one to report
                log.warning("closing the weight-update session after a failed update also failed: %s", e)
            raise
        self._update("/end_weight_update", [{}] * len(self.urls))

    def update_from_tensor(self, named: list[tuple[str, torch.Tensor]], flush_cache: bool, version: str) -> None:
        """Full tensors to every server (same host), serialized once per TP rank (rank r unpickles entry r and
        slices its shard). Inside `session`."""
        self._update("/update_weights_from_tensor", [
            {"serialized_named_tensors": [serialize_named_tensors(named) for _ in range(tp)], "load_format": None,
             "flush_cache": flush_cache, "weight_version": version} for tp in self.tp_sizes()])

    def update_from_disk(self, model_path: str, version: str | None = None) -> None:
        """Every server reloads its weights from a model directory it can read."""
        payload = {"model_path": model_path, "weight_version": version}
        self._update("/update_weights_from_disk", [payload] * len(self.urls))

    def init_group(self, master_address: str, master_port: int, group_name: str, backend: str) -> None:
        """Every server joins one group with the caller at rank 0, a server's TP ranks at consecutive ranks from its
        rank_offset. Returns once they joined, so the caller must be joining concurrently (another thread)."""
        sizes = self.tp_sizes()
        offsets = itertools.accumulate([1] + sizes[:-1])
        self._update("/init_weights_update_group", [
            {"master_address": master_address, "master_port": master_port, "rank_offset": offset,
             "world_size": self.group_size(), "group_name": group_name, "backend": backend} for offset in offsets])

    def destroy_group(self, group_name: str) -> None:
        self._update("/destroy_weights_update_group", [{"group_name": group_name}] * len(self.urls))

    def update_from_distributed(self, named: list[tuple[str, torch.Tensor]], group_name: str, flush_cache: bool,
                                version: str) -> None:
        """Announce the tensors the caller is broadcasting (concurrently) through the group. Inside `session`."""
        payload = {"names": [n for n, _ in named], "dtypes": [dtype_name(t.dtype) for _, t in named],
                   "shapes": [list(t.shape) for _, t in named], "group_name": group_name, "flush_cache": flush_cache,
                   "weight_version": version}
        self._update("/update_weights_from_distributed", [payload] * len(self.urls))
