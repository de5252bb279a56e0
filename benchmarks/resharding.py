"""Resharding from the training layout to the inference layout: HybridFlow micro-DP transfer against a naive
gather-to-rank-0-then-broadcast, per layout, on gloo ranks of this machine.

Per layout it prints bytes each rank sends (measured) against the HybridFlow formula (tp*pp - infer_tp) /
(infer_tp*tp*pp) * M and a full all-gather's (tp*pp - 1)/(tp*pp) * M, with M the model as the training layout stores
it; wall time of both transfers (same ranks, same run, every rank ending with its inference shard; the second of two
runs each); and each
side's peak extra resident memory on the busiest rank (sampled after each bucket or parameter).

    python benchmarks/resharding.py [--layers 8] [--hidden 1024] [--bucket-mb 64] [--layouts 4,1,1,2;2,2,1,1]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from fractions import Fraction

import torch
import torch.distributed as dist

from rlpost.models.weights import ModelDims, hf_to_megatron_shard, megatron_to_hf, padded_vocab, stage_layers
from rlpost.resharding.plan import make_plan, train_coord, train_rank
from rlpost.resharding.transfer import TransferStats, inference_buckets, make_groups, shard_shapes
from rlpost.testing.distributed import run_ranks
from rlpost.testing.state_dicts import random_hf_state


def _rss_mb() -> float:
    """Current resident memory (sampled after each bucket or parameter: peaks between samples are missed)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def naive(plan, rank, params, dims) -> tuple[int, float]:
    """Per parameter, rank 0 collects every shard, converts to full HF tensors and broadcasts them to all ranks,
    which keep their inference slice. Returns (bytes this rank sent, peak sampled resident MB)."""
    tp, pp, dp = plan.tp, plan.pp, plan.dp
    _, infer_rank = plan.inference_position(rank)
    sent, peak = 0, _rss_mb()
    for stage in range(pp):
        offset = stage_layers(dims.num_layers, pp, stage).start
        for name, shape in shard_shapes(dims, tp, pp, stage).items():
            if dims.tied and name == "output_layer.weight":
                continue
            shards = []
            for t in range(tp):
                src = train_rank(t, stage, 0, tp, dp)
                if rank == src == 0:
                    shards.append(params[name].contiguous())
                elif rank == src:
                    dist.send(params[name].contiguous(), dst=0)
                    sent += params[name].numel() * params[name].element_size()
                elif rank == 0:
                    buffer = torch.empty(shape)
                    dist.recv(buffer, src=src)
                    shards.append(buffer)
            meta = megatron_to_hf(name, [torch.empty(shape, device="meta")] * tp, dims, offset)
            full = megatron_to_hf(name, shards, dims, offset) if rank == 0 else None
            for k, (_, like) in enumerate(meta):
                tensor = full[k][1].contiguous() if rank == 0 else torch.empty(like.shape)
                dist.broadcast(tensor, src=0)
                if rank == 0:
                    sent += tensor.numel() * tensor.element_size() * (dist.get_world_size() - 1)
                tensor.chunk(plan.infer_tp, dim=0)[infer_rank].clone()  # the slice this rank's engine keeps
                peak = max(peak, _rss_mb())
    return sent, peak


def _rank(rank, world, dims, tp, pp, dp, infer_tp, bucket_bytes):
    state = random_hf_state(dims)
    c = train_coord(rank, tp, pp, dp)
    params = hf_to_megatron_shard(state.__getitem__, dims, tp, pp, c.tp_rank, c.pp_rank, padded_vocab(dims.vocab, tp))
    del state
    stored = sum(t.numel() * t.element_size() for n, t in params.items()
                 if not (dims.tied and n == "output_layer.weight"))
    plan = make_plan(tp, pp, dp, infer_tp)
    groups = make_groups(plan)
    def hybrid() -> tuple[TransferStats, float]:
        stats, peak = TransferStats(), _rss_mb()
        for _ in inference_buckets(plan, rank, params, dims, groups, bucket_bytes, torch.float32, stats):
            peak = max(peak, _rss_mb())  # the bucket is alive here, as when a transport sends it
        return stats, peak

    # resharding runs after every update: time the second run of each (the first sets up gloo connections)
    hybrid()
    dist.barrier()
    base = _rss_mb()
    start = time.perf_counter()
    stats, peak = hybrid()
    dist.barrier()
    hybrid_s, hybrid_mb = time.perf_counter() - start, peak - base
    naive(plan, rank, params, dims)
    dist.barrier()
    base = _rss_mb()
    start = time.perf_counter()
    naive_sent, peak = naive(plan, rank, params, dims)
    dist.barrier()
    naive_s, naive_mb = time.perf_counter() - start, peak - base
    return dict(stored=stored, sent=stats.bytes_sent, hybrid_s=hybrid_s, hybrid_mb=hybrid_mb, naive_sent=naive_sent,
                naive_s=naive_s, naive_mb=naive_mb, peak_bucket=stats.peak_bucket_bytes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--bucket-mb", type=float, default=64)
    parser.add_argument("--layouts", default="4,1,1,1;4,1,1,2;2,2,1,1;2,2,1,2;1,4,1,1;2,1,2,2",
                        help="tp,pp,dp,infer_tp;...")
    args = parser.parse_args()
    dims = ModelDims(num_layers=args.layers, hidden=args.hidden, heads=16, kv_heads=8, head_dim=args.hidden // 16,
                     ffn=int(args.hidden * 2.75) // 8 * 8, vocab=32000, tied=False, qkv_bias=True, qk_norm=False)
    print(f"model: {args.layers} layers, hidden {args.hidden}, vocab {dims.vocab}; fp32; bucket {args.bucket_mb} MB; "
          f"gloo ranks on {torch.get_num_threads()} threads")
    print("\n| tp | pp | dp | infer_tp | M (MB) | sent/rank MB | HybridFlow formula MB | full all-gather MB | "
          "naive busiest rank MB | HybridFlow s | naive s | speed-up | peak extra MB (HybridFlow / naive) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for layout in args.layouts.split(";"):
        tp, pp, dp, infer_tp = (int(x) for x in layout.split(","))
        world = tp * pp * dp
        make_plan(tp, pp, dp, infer_tp)  # refuses impossible layouts before starting ranks
        results = run_ranks(_rank, world, dims, tp, pp, dp, infer_tp, int(args.bucket_mb * 2 ** 20))
        replica = [r for r in range(world) if train_coord(r, tp, pp, dp).dp_rank == 0]
        m = sum(results[r]["stored"] for r in replica)
        sent = sum(results[r]["sent"] for r in replica) / (tp * pp)
        formula = float(Fraction(tp * pp - infer_tp, infer_tp * tp * pp)) * m if tp % infer_tp == 0 else float("nan")
        full = (tp * pp - 1) / (tp * pp) * m
        hybrid_s = max(r["hybrid_s"] for r in results)
        naive_s = max(r["naive_s"] for r in results)
        mb = 2 ** 20
        print(f"| {tp} | {pp} | {dp} | {infer_tp} | {m / mb:.0f} | {sent / mb:.1f} | {formula / mb:.1f} | "
              f"{full / mb:.1f} | {max(r['naive_sent'] for r in results) / mb:.0f} | {hybrid_s:.2f} | {naive_s:.2f} | "
              f"{naive_s / hybrid_s:.1f}x | {max(r['hybrid_mb'] for r in results):.0f} / "
              f"{max(r['naive_mb'] for r in results):.0f} |")


if __name__ == "__main__":
    sys.exit(main())
