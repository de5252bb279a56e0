"""SGLang's HTTP bodies: how errors come back, and how /update_weights_from_tensor carries tensors."""

from __future__ import annotations

import base64
import io
import json
import pickle
from collections.abc import Iterable
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch


class ServerError(RuntimeError):
    def __init__(self, url: str, path: str, status: int, message: str):
        super().__init__(f"{url}{path} answered HTTP {status}: {message}")
        self.url, self.path, self.status, self.message = url, path, status, message


def decode_body(body: bytes) -> Any:
    """A response body: JSON, else text, else None when empty."""
    if not body:
        return None
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return body.decode(errors="replace")


def error_message(body: bytes) -> str:
    """The message of an error body in any of SGLang's shapes: {"error": {"message"}}, {"message"}, {"detail"}."""
    data = decode_body(body)
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        for key in ("message", "detail"):
            if key in data:
                return str(data[key])
    return str(data)


def serialize_named_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SGLang's wire form for /update_weights_from_tensor: base64 of a ForkingPickler dump, so tensors travel as
    shared-memory (CPU) or IPC (CUDA) handles rather than bytes. Valid while the sender keeps the tensors alive.

    CPU tensors go through named shared-memory files: the default file-descriptor strategy hands fds over a socket
    that only processes sharing a multiprocessing auth key (parent and children) may use, and a server is not one.
    Pickling moves each CPU tensor's storage into /dev/shm in place, so send copies (resharding buckets), size
    /dev/shm for a bucket (Docker's default is 64 MB), and do not call this from two threads at once (the sharing
    strategy is process-wide)."""
    import torch.multiprocessing as mp

    previous = mp.get_sharing_strategy()
    mp.set_sharing_strategy("file_system")
    try:
        buffer = io.BytesIO()
        ForkingPickler(buffer).dump(list(named))
    finally:
        mp.set_sharing_strategy(previous)
    return base64.b64encode(buffer.getvalue()).decode()


def deserialize_named_tensors(text: str) -> list[tuple[str, torch.Tensor]]:
    """The receiving side; unpickling runs what it is sent, so a server doing this binds to trusted networks only."""
    try:
        named = pickle.loads(base64.b64decode(text))
    except Exception as e:  # noqa: BLE001 - any decoding failure is the sender's
        raise ValueError(f"does not decode to named tensors: {e}") from e
    if not isinstance(named, list) or not all(
            isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[1], torch.Tensor) for x in named):
        raise ValueError("must decode to a list of (name, tensor) pairs")
    return [(str(n), t) for n, t in named]
