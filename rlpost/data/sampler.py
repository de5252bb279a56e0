"""Seeded, resumable batching of dataset indices by epoch and step."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class BatchSampler:
    """Yields index batches; the state is (epoch, step), and each epoch's order is a pure function of
    (seed, epoch), so a resumed run sees exactly the batches the uninterrupted run would have seen."""

    def __init__(self, n: int, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if drop_last and n < batch_size:
            raise ValueError(f"the dataset has {n} prompts, fewer than the batch size {batch_size}: "
                             f"an epoch would have no steps")
        if n == 0:
            raise ValueError("the dataset is empty")
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.epoch, self.step = 0, 0
        if drop_last and n % batch_size:
            log.info("each epoch uses %d of %d prompts (batch size %d); shuffling changes which are left out",
                     n - n % batch_size, n, batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self):
        return self

    def __next__(self) -> list[int]:
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        start = self.step * self.batch_size
        self.step += 1
        return self.order(self.epoch)[start : start + self.batch_size].tolist()

    def epoch_batches(self) -> list[list[int]]:
        """One pass in order (validation): every index exactly once."""
        order = self.order(0)
        return [order[i : i + self.batch_size].tolist() for i in range(0, self.n, self.batch_size)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "n": self.n, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "n", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]}, this run has {key}={getattr(self, key)}: "
                                 f"resuming with different data or batch size would replay different batches")
        self.epoch, self.step = state["epoch"], state["step"]


def total_steps(steps_per_epoch: int, total_epochs: int, total_training_steps: int | None) -> int:
    return total_training_steps if total_training_steps is not None else steps_per_epoch * total_epochs
