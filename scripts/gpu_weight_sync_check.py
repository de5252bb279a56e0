"""The weight-sync checks only a GPU can run (issue 16), as one script for a lent GPU machine:

    python scripts/gpu_weight_sync_check.py [--out DIR]

1. tensor: CUDA tensors through /update_weights_from_tensor's wire form (IPC handles, the GPU named by UUID, one
   serialization per TP rank), unpickled in the processes of the SGLang double (tests/sglang_double) as SGLang's
   ranks do it; compared bitwise.
2. nccl: the trainer side joins an NCCL weight-update group with the double's scheduler ranks and broadcasts CUDA
   buckets; compared bitwise. NCCL refuses two ranks on one GPU, so this needs two GPUs.
3. sglang: when SGLang itself imports (0.5.23; its wheels with torch 2.14.1 do not fit a device call's 64 MiB carry,
   so it must already be installed), launch it with a tiny random Qwen2, push another checkpoint's weights over
   tensors, and check greedy generation follows the new weights (transformers on the same GPU as reference).

Prints one row per check (ok / FAILED / skipped and why) and exits non-zero if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlpost.net import free_port  # noqa: E402
from rlpost.resharding.servers import WeightServers  # noqa: E402
from rlpost.resharding.transports import BroadcastTransport, HTTPTransport, push_buckets  # noqa: E402
from tests.sglang_double.server import SGLangDouble  # noqa: E402


def cuda_buckets(device: str):
    g = torch.Generator().manual_seed(0)
    return [[("a.weight", torch.randn(64, 32, generator=g).to(device)),
             ("b.weight", torch.randn(32, generator=g).to(device, torch.bfloat16))],
            [("c.weight", torch.randn(128, 32, generator=g).to(device, torch.float16))]]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.cpu(), b.cpu()
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                     b.reshape(-1).view(torch.uint8))


def delivered_bitwise(double: SGLangDouble, buckets) -> bool:
    want = [dict(b) for b in buckets]
    return len(double.loaded) == len(want) and all(
        got.keys() == w.keys() and all(same_bits(got[k], w[k]) for k in w)
        for (_, _, per_rank), w in zip(double.loaded, want) for got in per_rank)


def check_tensor(workdir: Path) -> str:
    with SGLangDouble(2, workdir) as double:
        buckets = cuda_buckets("cuda")
        push_buckets(buckets, HTTPTransport(WeightServers([double.url])), "v1")
        assert delivered_bitwise(double, buckets), "a CUDA tensor arrived changed"
        return f"{sum(len(b) for b in buckets)} CUDA tensors x 2 TP ranks bitwise"


def check_nccl(workdir: Path) -> str:
    if torch.cuda.device_count() < 2:
        return f"skipped: NCCL needs one GPU per rank and this machine has {torch.cuda.device_count()}"
    with SGLangDouble(1, workdir) as double:
        transport = BroadcastTransport(WeightServers([double.url]), "127.0.0.1", free_port(), "nccl")
        buckets = cuda_buckets("cuda")
        start = time.monotonic()
        push_buckets(buckets, transport, "v1")
        transport.close()
        assert delivered_bitwise(double, buckets), "a broadcast tensor arrived changed"
        return f"bitwise, {time.monotonic() - start:.2f} s"


def check_sglang(workdir: Path) -> str:
    if importlib.util.find_spec("sglang") is None:
        return "skipped: SGLang is not installed on this machine"
    from transformers import AutoModelForCausalLM

    from rlpost.models.safetensors_dir import SafetensorsDir
    from rlpost.rollout.client import SGLangClient
    from rlpost.rollout.launcher import ServerProcess, ServerSpec
    from rlpost.testing.tiny_models import make_tiny_checkpoint

    base = make_tiny_checkpoint("qwen2", workdir / "base")
    other = make_tiny_checkpoint("qwen2", workdir / "other", seed=1)
    prompt = [15, 27, 99, 140, 200, 33]

    def reference(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda()
        out = model.generate(torch.tensor([prompt]).cuda(), max_new_tokens=8, do_sample=False, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    async def greedy(url):
        async with SGLangClient([url]) as client:
            return (await client.generate(prompt, {"max_new_tokens": 8, "temperature": 0.0}))["output_ids"]

    spec = ServerSpec(str(base), engine="sglang", port=free_port(), dtype="float32", mem_fraction_static=0.3,
                      deterministic_inference=True)
    with ServerProcess(spec, workdir / "sglang.log") as server:
        server.wait_healthy(timeout_s=600)
        before = asyncio.run(greedy(spec.url))
        reader = SafetensorsDir(other)
        named = [(n, reader.get(n).cuda()) for n in reader.files]
        push_buckets([named], HTTPTransport(WeightServers([spec.url])), "v1")
        after = asyncio.run(greedy(spec.url))
    assert before == reference(base), f"SGLang's greedy {before} != transformers' {reference(base)}"
    assert after == reference(other), f"after the sync SGLang generated {after}, the new weights {reference(other)}"
    return "generation follows the pushed weights (tensor path)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="directory for logs (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="rlpost-gpu-check-"))
    print(f"torch {torch.__version__}, {torch.cuda.device_count()} GPU(s): "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    failed = False
    for name, check in [("tensor", check_tensor), ("nccl", check_nccl), ("sglang", check_sglang)]:
        (out / name).mkdir(parents=True, exist_ok=True)
        try:
            result = check(out / name)
        except Exception:  # noqa: BLE001 - every check reports; the exit code says whether any failed
            result, failed = "FAILED\n" + traceback.format_exc(), True
        print(f"| {name:<7} | {result} |", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
