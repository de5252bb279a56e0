"""Deliver resharded buckets to an inference engine: in-process (colocated embedded engine), HTTP
(/update_weights_from_tensor, same host), or a torch.distributed broadcast (/update_weights_from_distributed, split
pools). Every push carries the weight version; the prefix cache is flushed with the last bucket only, so requests
never mix cached keys/values of two versions while the update runs.

Synchronous on purpose: resharding runs in the training worker's thread, bucket after bucket.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Iterable, Iterator

import torch

from rlpost.rollout.client import serialize_named_tensors
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


def _post(url: str, path: str, payload: dict, timeout_s: float) -> dict:
    request = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url}{path} answered HTTP {e.code}: {e.read().decode(errors='replace')}") from e
    if isinstance(body, dict) and body.get("success") is False:
        raise RuntimeError(f"{url}{path} failed: {body.get('message')}")
    return body


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
        payload = {"serialized_named_tensors": [serialize_named_tensors([(n, t.clone()) for n, t in bucket])],
                   "load_format": None, "flush_cache": last, "weight_version": version}
        _post(self.url, "/update_weights_from_tensor", payload, self.timeout_s)


class BroadcastTransport:
    """Servers in another pool: this process is rank 0 of a gloo group the servers join, and broadcasts each
    tensor while the HTTP call that announces it is in flight."""

    def __init__(self, urls: list[str], master_address: str, master_port: int, group_name: str = "weight_update_group",
                 timeout_s: float = 600.0):
        self.urls, self.group_name, self.timeout_s = urls, group_name, timeout_s
        joins = [threading.Thread(target=_post, args=(url, "/init_weights_update_group", {
            "master_address": master_address, "master_port": master_port, "rank_offset": 1 + i,
            "world_size": 1 + len(urls), "group_name": group_name, "backend": "gloo"}, timeout_s))
            for i, url in enumerate(urls)]
        for thread in joins:
            thread.start()
        self.group, self._store = new_group(master_address, master_port, 0, 1 + len(urls), group_name)
        for thread in joins:
            thread.join()

    def push(self, bucket: Bucket, last: bool, version: str) -> None:
        payload = {"names": [n for n, _ in bucket], "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
                   "shapes": [list(t.shape) for _, t in bucket], "group_name": self.group_name, "flush_cache": last,
                   "weight_version": version}
        errors: list[BaseException] = []

        def announce(url: str) -> None:
            try:
                _post(url, "/update_weights_from_distributed", payload, self.timeout_s)
            except BaseException as e:  # noqa: BLE001 - re-raised in the pushing thread
                errors.append(e)

        calls = [threading.Thread(target=announce, args=(url,)) for url in self.urls]
        for thread in calls:
            thread.start()
        for _, tensor in bucket:
            broadcast(self.group, tensor.contiguous())
        for thread in calls:
            thread.join()
        if errors:
            raise errors[0]


def push_buckets(buckets: Iterable[Bucket], transport, version: str) -> int:
    """Send every bucket; returns how many tensors went."""
    count = 0
    for bucket, last in with_last(buckets):
        transport.push(bucket, last, version)
        count += len(bucket)
    return count
