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


def _reduce_tensor(tensor: torch.Tensor):
    """torch's reduction, except that a CUDA tensor names its device by UUID, as SGLang's patched reductions do
    (sglang.srt.utils.patch_torch): the server process sees other CUDA_VISIBLE_DEVICES, where the sender's device
    index means another GPU. SGLang's receiving side maps the UUID back to its own index."""
    from torch.multiprocessing import reductions

    rebuild, args = reductions.reduce_tensor(tensor)
    if rebuild is reductions.rebuild_cuda_tensor:
        args = (*args[:_CUDA_DEVICE_ARG], str(torch.cuda.get_device_properties(args[_CUDA_DEVICE_ARG]).uuid),
                *args[_CUDA_DEVICE_ARG + 1:])
    return rebuild, args


_CUDA_DEVICE_ARG = 6  # rebuild_cuda_tensor(cls, size, stride, offset, storage_cls, dtype, device, handle, ...)


def serialize_named_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SGLang's wire form for /update_weights_from_tensor: base64 of a ForkingPickler dump, so tensors travel as
    shared-memory (CPU) or IPC (CUDA) handles rather than bytes. Valid while the sender keeps the tensors alive.
    Serialize once per receiving TP rank: each rank unpickles only its own entry, and a CUDA IPC handle's reference
    count breaks when two ranks unpickle the same one.

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
        pickler = ForkingPickler(buffer)
        pickler.dispatch_table.update({cls: _reduce_tensor for cls in (torch.Tensor, torch.nn.Parameter)})
        pickler.dump(list(named))
    finally:
        mp.set_sharing_strategy(previous)
    return base64.b64encode(buffer.getvalue()).decode()


class _TensorUnpickler(pickle.Unpickler):
    """Rebuilds shared-memory CPU tensors and nothing else: a payload naming any other global is refused before it
    runs (SGLang's receiving side keeps an allowlist too)."""

    _ALLOWED = {("torch.multiprocessing.reductions", f) for f in (
        "rebuild_tensor", "rebuild_typed_storage", "rebuild_storage_filename", "rebuild_storage_empty")} | {
        ("torch", "Tensor"), ("torch", "Size"), ("torch.storage", "UntypedStorage"),
        ("torch.nn.parameter", "Parameter")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refuses to load {module}.{name} (only CPU tensors are accepted)")


def deserialize_named_tensors(text: str) -> list[tuple[str, torch.Tensor]]:
    """The receiving side of serialize_named_tensors, for CPU tensors."""
    try:
        named = _TensorUnpickler(io.BytesIO(base64.b64decode(text, validate=True))).load()
    except Exception as e:  # noqa: BLE001 - any decoding failure is the sender's
        raise ValueError(f"does not decode to named tensors: {e}") from e
    if not isinstance(named, list) or not all(
            isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[1], torch.Tensor) for x in named):
        raise ValueError("must decode to a list of (name, tensor) pairs")
    return [(str(n), t) for n, t in named]
