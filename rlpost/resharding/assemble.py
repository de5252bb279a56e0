"""Build one inference TP rank's HF tensors from the training TP shards a plan routes to it.

Inference shard j of an HF tensor is its j-th of infer_tp equal slices along the dimension megatron shards it (rows
of q/k/v by query group, of gate/up, of the vocabulary; columns of o_proj/down; norms whole). Vocabulary slices
partition megatron's padded vocabulary and then drop the padding rows, so a shard may be shorter than
padded/infer_tp (or empty). With infer_tp = 1 the result is the full HF tensor, bitwise what megatron_to_hf gives.
"""

from __future__ import annotations

import torch

from rlpost.models.weights import ModelDims, check_tp, megatron_shard_to_hf, padded_vocab

VOCAB_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


def inference_shard(name: str, shards: dict[int, torch.Tensor], dims: ModelDims, tp: int, infer_tp: int,
                    infer_rank: int, layer_offset: int, spec: str = "local") -> list[tuple[str, torch.Tensor]]:
    """shards: training TP rank -> that rank's shard of megatron parameter `name`, for the TP ranks inference rank
    infer_rank draws from (all tp ranks when infer_tp = 1; one when infer_tp > tp). Returns (HF name, slice)."""
    check_tp(dims, infer_tp, "infer_tp")
    ranks = sorted(shards)
    if infer_tp <= tp:
        per = tp // infer_tp
        expected = list(range(infer_rank * per, (infer_rank + 1) * per))
    else:
        expected = [infer_rank // (infer_tp // tp)]
    if ranks != expected:
        raise ValueError(f"inference rank {infer_rank} of {infer_tp} needs training TP shards {expected} of '{name}', "
                         f"got {ranks}")
    pieces = [megatron_shard_to_hf(name, shards[r], dims, tp, layer_offset, spec) for r in ranks]
    out = []
    for k, (hf_name, first, dim) in enumerate(pieces[0]):
        if dim is None:
            out.append((hf_name, first))
            continue
        span = torch.cat([p[k][1] for p in pieces], dim=dim) if len(pieces) > 1 else first
        sub, parts = (infer_rank % (infer_tp // tp), infer_tp // tp) if infer_tp > tp else (0, 1)
        piece = span.chunk(parts, dim=dim)[sub] if parts > 1 else span
        if hf_name in VOCAB_NAMES:
            rows = padded_vocab(dims.vocab, tp) // infer_tp
            start = infer_rank * rows
            piece = piece[: max(0, min(rows, dims.vocab - start))]
        out.append((hf_name, piece.contiguous()))
    return out
