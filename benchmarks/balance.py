"""Claim: balanced splitting by token count (Batch.split_balanced) cuts the data-parallel straggler, the rank with
the most tokens, against the contiguous split of the same batch. Measured as max-rank tokens over the mean (1.00 is
perfect); the step time of a DP group follows its slowest rank.

    python benchmarks/balance.py
"""

from __future__ import annotations

import time

import torch

from rlpost.batch import Batch


def imbalance(loads: list[int]) -> float:
    return max(loads) / (sum(loads) / len(loads))


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    print(f"{'samples':>8} {'dp':>3} {'lengths':>22} {'contiguous':>11} {'balanced':>9} {'straggler cut':>14} "
          f"{'split ms':>9}")
    for samples, dp, kind in [(256, 4, "uniform 32-2048"), (256, 8, "uniform 32-2048"), (1024, 8, "long tail"),
                              (4096, 16, "long tail"), (1024, 8, "grouped by prompt")]:
        if kind.startswith("uniform"):
            lengths = torch.randint(32, 2049, (samples,), generator=gen)
        elif kind == "long tail":
            lengths = (torch.empty(samples).exponential_(1 / 300, generator=gen) + 32).clamp(max=8192).long()
        else:  # GRPO groups: samples of one prompt are adjacent and of similar length
            per_prompt = torch.randint(64, 4096, (samples // 8,), generator=gen)
            lengths = per_prompt.repeat_interleave(8) + torch.randint(0, 64, (samples,), generator=gen)
        batch = Batch({"n_tokens": lengths})
        contiguous = [int(p["n_tokens"].sum()) for p in batch.chunk(dp)]
        t = time.perf_counter()
        parts, _ = batch.split_balanced(dp, "n_tokens")
        elapsed = time.perf_counter() - t
        balanced = [int(p["n_tokens"].sum()) for p in parts]
        c, b = imbalance(contiguous), imbalance(balanced)
        print(f"{samples:>8} {dp:>3} {kind:>22} {c:>11.4f} {b:>9.4f} {(c - b) / (c - 1) * 100:>13.0f}% "
              f"{elapsed * 1e3:>9.1f}")


if __name__ == "__main__":
    main()
