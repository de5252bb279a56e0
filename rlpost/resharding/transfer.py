"""Move weights from the training layout into each rank's inference shard, inside micro-DP groups only, in buckets.

Every rank walks the model in the same order (stage by stage, parameter by parameter). For each parameter, the
group members holding a needed shard broadcast it within the group; each member converts what it now has into its
inference shard's HF tensors (rlpost.resharding.assemble) and hands them on bucket by bucket, so extra memory stays
about one bucket plus one parameter's shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from rlpost.models.weights import ModelDims, hf_shape, hf_shard_dim, hf_to_megatron_shard, padded_vocab, stage_layers
from rlpost.resharding.assemble import VOCAB_NAMES, inference_shard
from rlpost.resharding.plan import ReshardPlan, train_coord


def make_groups(plan: ReshardPlan, replicas: bool = False) -> dict[tuple[int, ...], object]:
    """One process group per micro-DP group (or, with replicas, per inference replica) of more than one rank;
    every rank must call this, in the same order."""
    return {g: dist.new_group(list(g)) for g in (plan.replicas if replicas else plan.micro_dp_groups) if len(g) > 1}


def shard_shapes(dims: ModelDims, tp: int, pp: int, stage: int, spec: str = "local") -> dict[str, torch.Size]:
    """Megatron shard shapes of a stage, computed on meta tensors (the same for every TP rank)."""
    shards = hf_to_megatron_shard(lambda n: torch.empty(hf_shape(n, dims), device="meta"), dims, tp, pp, 0, stage,
                                  padded_vocab(dims.vocab, tp), spec)
    return {name: t.shape for name, t in shards.items()}


@dataclass
class TransferStats:
    bytes_sent: int = 0  # bytes this rank broadcast times the peers that received them
    buckets: int = 0
    peak_bucket_bytes: int = 0
    tensors: int = 0
    bucket_sizes: list[int] = field(default_factory=list)


def inference_buckets(plan: ReshardPlan, rank: int, params: dict[str, torch.Tensor], dims: ModelDims,
                      groups: dict[tuple[int, ...], object], bucket_bytes: int, dtype: torch.dtype,
                      stats: TransferStats | None = None, spec: str = "local",
                      ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """This rank's inference shard as buckets of (HF name, tensor). params: this rank's megatron stage (name ->
    tensor). Collective within the rank's micro-DP group: all members must iterate to the end."""
    stats = stats if stats is not None else TransferStats()
    tp, pp, dp = plan.tp, plan.pp, plan.dp
    group = plan.group_of(rank)
    process_group = groups.get(group)
    _, infer_rank = plan.inference_position(rank)
    holder = {(c.pp_rank, c.tp_rank): c.rank for c in (train_coord(r, tp, pp, dp) for r in group)}
    device = next(iter(params.values())).device  # where the group's backend expects tensors (CUDA with NCCL)
    bucket, size = [], 0
    for stage in sorted({s for s, _ in holder}):
        offset = stage_layers(dims.num_layers, pp, stage).start
        tp_ranks = sorted(t for s, t in holder if s == stage)
        for name, shape in shard_shapes(dims, tp, pp, stage, spec).items():
            if dims.tied and name == "output_layer.weight":
                continue  # the last stage's copy of the tied embedding: the first stage sends the embedding
            shards = {}
            for t in tp_ranks:
                src = holder[(stage, t)]
                tensor = params[name].contiguous() if src == rank else torch.empty(shape, dtype=dtype, device=device)
                if process_group is not None:
                    dist.broadcast(tensor, src=src, group=process_group)
                    if src == rank:
                        stats.bytes_sent += tensor.numel() * tensor.element_size() * (len(group) - 1)
                shards[t] = tensor
            for hf_name, tensor in inference_shard(name, shards, dims, tp, plan.infer_tp, infer_rank, offset, spec):
                bucket.append((hf_name, tensor))
                size += tensor.numel() * tensor.element_size()
                stats.tensors += 1
                if size >= bucket_bytes:
                    yield _emit(bucket, size, stats)
                    bucket, size = [], 0
    if bucket:
        yield _emit(bucket, size, stats)


def full_buckets(plan: ReshardPlan, rank: int, buckets: Iterator[list[tuple[str, torch.Tensor]]], dims: ModelDims,
                 replica_groups: dict[tuple[int, ...], object], stats: TransferStats | None = None,
                 ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Full HF tensors from inference shards, gathered across the rank's inference replica: what SGLang's weight
    updates take (each of its TP ranks slices for itself). Collective within the replica."""
    stats = stats if stats is not None else TransferStats()
    replica = plan.replicas[plan.inference_position(rank)[0]]
    group = replica_groups.get(replica)
    rows = padded_vocab(dims.vocab, plan.tp) // plan.infer_tp
    # a process group ranks its members by global rank; the replica lists them by inference TP rank
    order = [sorted(replica).index(r) for r in replica]
    for bucket in buckets:
        out = []
        for name, shard in bucket:
            dim = hf_shard_dim(name)
            if group is None or dim is None:
                out.append((name, shard))
                continue
            if name in VOCAB_NAMES:  # slices were trimmed of padding: pad back to equal sizes for the gather
                shard = torch.cat([shard, shard.new_zeros(rows - shard.shape[0], *shard.shape[1:])])
            parts = [torch.empty_like(shard) for _ in replica]
            dist.all_gather(parts, shard.contiguous(), group=group)
            stats.bytes_sent += shard.numel() * shard.element_size() * (len(replica) - 1)
            full = torch.cat([parts[i] for i in order], dim=dim)
            out.append((name, full[: dims.vocab] if name in VOCAB_NAMES else full))
        yield out


def _emit(bucket: list, size: int, stats: TransferStats) -> list:
    stats.buckets += 1
    stats.bucket_sizes.append(size)
    stats.peak_bucket_bytes = max(stats.peak_bucket_bytes, size)
    return bucket
