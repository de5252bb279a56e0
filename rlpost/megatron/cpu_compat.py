"""Run megatron-core on CPU with gloo, without editing megatron. Active only when CUDA is absent.

megatron-core hard-codes CUDA in a few places; each shim below names what it covers:
- device rewrite (a TorchFunctionMode): `device="cuda"` / `device=<int>` / `.to("cuda")` / `.cuda()` in the causal
  mask, rotary embeddings, DDP buffers, schedules (total_num_tokens), optimizer, grad clipping and p2p -> CPU.
  The mode is thread-local: call enable() in every thread that runs megatron.
- tensor type names: `param.grad.type() == 'torch.cuda.FloatTensor'` checks in grad clipping and the optimizers
  see CUDA names for CPU tensors.
- torch.cuda.current_device / synchronize: 0 (rewritten to CPU by the mode) and a no-op.
- CUDA RNG -> CPU RNG: on a CPU build torch.cuda.manual_seed silently does nothing, so megatron's RNG tracker
  would fork nothing. The "CUDA" generator becomes the CPU default generator, which CPU kernels actually use.
"""

from __future__ import annotations

import threading

import torch
from torch.overrides import TorchFunctionMode

_state = threading.local()
_patched: dict[tuple[object, str], object] = {}


def _is_gpu_device(device) -> bool:
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class CpuDeviceMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_gpu_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_gpu_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        result = func(*args, **kwargs)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and isinstance(result, str):
            return result.replace("torch.", "torch.cuda.", 1)
        return result


def _cpu_get_rng_state(*_, **__):
    return torch.get_rng_state()


def _cpu_set_rng_state(state, *_, **__):
    torch.set_rng_state(state)


def _patch(owner, name: str, value) -> None:
    _patched.setdefault((owner, name), getattr(owner, name))
    setattr(owner, name, value)


def needed() -> bool:
    return not torch.cuda.is_available()


def enable() -> bool:
    """Install the shims for this process and enter the device mode on this thread. No-op with CUDA."""
    if not needed():
        return False
    from megatron.core.tensor_parallel import random as mp_random

    if not _patched:
        _patch(torch.cuda, "current_device", lambda: 0)
        _patch(torch.cuda, "synchronize", lambda *_, **__: None)
        _patch(torch.cuda, "manual_seed", torch.manual_seed)
        _patch(torch.cuda, "get_rng_state", _cpu_get_rng_state)
        _patch(torch.cuda, "set_rng_state", _cpu_set_rng_state)
        _patch(mp_random, "_get_cuda_rng_state", _cpu_get_rng_state)
        _patch(mp_random, "_set_cuda_rng_state", _cpu_set_rng_state)
    if getattr(_state, "mode", None) is None:
        _state.mode = CpuDeviceMode()
        _state.mode.__enter__()
    return True


def disable() -> None:
    """Undo enable() for this process and thread (tests use it to show what each shim prevents)."""
    mode = getattr(_state, "mode", None)
    if mode is not None:
        mode.__exit__(None, None, None)
        _state.mode = None
    for (owner, name), original in _patched.items():
        setattr(owner, name, original)
    _patched.clear()


def active() -> bool:
    return getattr(_state, "mode", None) is not None
