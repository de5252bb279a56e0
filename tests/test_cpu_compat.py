"""Each CPU shim, checked with the layer on (right result) and off (the failure it prevents), in one spawned rank
so the test process never carries megatron's global state."""

import pytest
import torch

from rlpost.testing.distributed import run_ranks


def _fails(fn) -> str | None:
    try:
        fn()
    except Exception as e:  # what megatron hits on a CPU build
        return f"{type(e).__name__}: {e}"
    return None


def _checks(rank, world):
    from megatron.core import parallel_state as ps
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    from rlpost.megatron import cpu_compat
    from rlpost.megatron.parallel import setup_model_parallel

    out = {}
    ps.initialize_model_parallel(1, 1)
    out["seed_without"] = _fails(lambda: model_parallel_cuda_manual_seed(123))
    out["device_without"] = _fails(lambda: torch.empty(2, device="cuda"))
    out["sync_without"] = _fails(torch.cuda.synchronize)
    param = torch.nn.Parameter(torch.ones(4))
    param.grad = torch.full((4,), 2.0)
    out["clip_without"] = _fails(lambda: clip_grad_by_total_norm_fp32([param], max_norm=1.0, total_norm=4.0))
    out["rotary_without"] = _fails(lambda: _rotary())

    setup_model_parallel(1, 1, seed=123)
    out["active"] = cpu_compat.active()
    out["devices"] = [torch.empty(2, device="cuda").device.type, torch.arange(3, device=0).device.type,
                      torch.zeros(1).to(torch.cuda.current_device()).device.type, torch.zeros(1).cuda().device.type,
                      torch.zeros(1).to("cuda", torch.float64).dtype == torch.float64]
    out["type_name"] = torch.zeros(1).type()
    out["sync"] = _fails(torch.cuda.synchronize)
    clip_grad_by_total_norm_fp32([param], max_norm=1.0, total_norm=4.0)
    out["clipped_grad"] = param.grad.tolist()
    out["rotary"] = _rotary().shape
    # RNG: the default stream is seeded with the seed, the TP stream with seed + 2718 + tp_rank
    out["default_stream"] = torch.equal(torch.rand(5), torch.rand(5, generator=torch.Generator().manual_seed(123)))
    with get_cuda_rng_tracker().fork():
        forked = torch.rand(5)
    with get_cuda_rng_tracker().fork():
        forked_again = torch.rand(5)
    gen = torch.Generator().manual_seed(123 + 2718)
    out["tp_stream"] = torch.equal(forked, torch.rand(5, generator=gen))
    out["tp_stream_continues"] = torch.equal(forked_again, torch.rand(5, generator=gen))
    cpu_compat.disable()
    out["after_disable"] = _fails(lambda: torch.empty(2, device="cuda")) is not None
    return out


def _rotary():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    return RotaryEmbedding(kv_channels=16, rotary_percent=1.0)(8)


@pytest.fixture(scope="module")
def checks():
    return run_ranks(_checks, 1)[0]


def test_without_the_layer_megatron_hits_cuda(checks):
    for key in ("seed_without", "device_without", "sync_without", "clip_without", "rotary_without"):
        assert checks[key] is not None, key
    assert checks["clip_without"].startswith("AssertionError")  # param.grad.type() == 'torch.cuda.FloatTensor'
    assert "not compiled with CUDA" in checks["seed_without"]


def test_device_rewrite(checks):
    assert checks["active"] and checks["devices"] == ["cpu", "cpu", "cpu", "cpu", True]
    assert checks["rotary"] == (8, 1, 1, 16)
    assert checks["after_disable"]


def test_type_names_and_grad_clipping(checks):
    assert checks["type_name"] == "torch.cuda.FloatTensor"
    # grad [2,2,2,2] with total norm 4 clipped to max norm 1: scaled by 1 / (4 + 1e-6)
    assert checks["clipped_grad"] == pytest.approx([0.5] * 4, rel=1e-5)
    assert checks["sync"] is None


def test_rng_tracker_streams_are_seeded_cpu_streams(checks):
    assert checks["default_stream"] and checks["tp_stream"] and checks["tp_stream_continues"]
