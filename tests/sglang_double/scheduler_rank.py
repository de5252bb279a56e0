"""One TP rank of an SGLang 0.5.23 scheduler, as far as weight updates go; a process of its own, as in SGLang (a
process registers a group name once). Commands arrive as JSON lines on stdin, answers leave as JSON lines on stdout.

What it reproduces, from sglang/srt (model_runner_components/weight_updater.py, utils/common.py):
- the scheduler has a default process group before any weight-update group (SGLang asserts it);
- joining: rank = rank_offset + tp_rank; a tcp:// rendezvous at master_address:master_port (rank 0, the trainer,
  hosts the store), the store wrapped in a PrefixStore named after the group, then torch's
  _new_process_group_helper with that store and the group name; the group's ranks mapped to themselves;
- receiving: one empty tensor per announced (name, dtype, shape), on the GPU with NCCL, each an async broadcast from
  rank 0 on the group, all awaited at the end;
- /update_weights_from_tensor: TP rank r unpickles entry r of serialized_named_tensors only; a CUDA tensor's device
  arrives as the GPU's UUID (SGLang's patched torch reductions), mapped back to this process's device index.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d


def join(tp_rank: int, master_address: str, master_port: int, rank_offset: int, world_size: int, group_name: str,
         backend: str):
    rank = rank_offset + tp_rank
    timeout = distributed_c10d.default_pg_timeout
    url = f"tcp://{master_address}:{master_port}"
    store, rank, world_size = next(distributed_c10d.rendezvous(url, rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    store = distributed_c10d.PrefixStore(group_name, store)
    group, _ = distributed_c10d._new_process_group_helper(
        world_size, rank, [], distributed_c10d.Backend(backend), store, group_name=group_name,
        backend_options=None, timeout=timeout, device_id=None)
    distributed_c10d._world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def receive(group, names: list[str], dtypes: list[str], shapes: list[list[int]],
            device: str) -> dict[str, torch.Tensor]:
    pending = []
    for name, dtype, shape in zip(names, dtypes, shapes):
        tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        pending.append((name, tensor, dist.broadcast(tensor, src=0, group=group, async_op=True)))
    for _, _, handle in pending:
        handle.wait()
    return {name: tensor for name, tensor, _ in pending}


def _rebuild_cuda_tensor_by_uuid(*args):
    from torch.multiprocessing import reductions

    device = args[6]
    if isinstance(device, str):
        device = next(i for i in range(torch.cuda.device_count())
                      if str(torch.cuda.get_device_properties(i).uuid) == device)
    return reductions.rebuild_cuda_tensor(*args[:6], device, *args[7:])


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("torch.multiprocessing.reductions", "rebuild_cuda_tensor"):
            return _rebuild_cuda_tensor_by_uuid
        return super().find_class(module, name)


def load_tensors(entry: str) -> dict[str, torch.Tensor]:
    """Copies: a shared tensor is valid only while the sender holds it."""
    return {name: tensor.clone() for name, tensor in _Unpickler(io.BytesIO(base64.b64decode(entry))).load()}


def main() -> None:
    tp_rank, default_port = int(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{default_port}", rank=0, world_size=1,
                            timeout=timedelta(seconds=60))
    groups = {}
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["op"] == "init":
                groups[command["group_name"]] = join(tp_rank, command["master_address"], command["master_port"],
                                                     command["rank_offset"], command["world_size"],
                                                     command["group_name"], command["backend"])
            elif command["op"] == "update":
                torch.save(receive(groups[command["group_name"]], command["names"], command["dtypes"],
                                   command["shapes"], "cuda" if command["backend"] == "nccl" else "cpu"),
                           command["out"])
            elif command["op"] == "tensor":
                torch.save(load_tensors(command["entry"]), command["out"])
            elif command["op"] == "destroy":
                dist.destroy_process_group(groups.pop(command["group_name"]))
            answer = {"success": True, "message": "Success"}
        except Exception as e:  # noqa: BLE001 - reported to the server, as SGLang's ranks report failures
            answer = {"success": False, "message": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
