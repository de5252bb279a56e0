"""Additions and subtractions from reasoning-gym (`chain_sum`: "State the final answer to the following arithmetic
problem: 48 - 7 =") as verl-schema rows: the quickstart's task. Generated offline at a difficulty a 135M model partly
solves, so GRPO has signal from the first step.

Held-out problems can never appear in training: a problem goes to the test split when a hash of its question says
so, whichever seed generated it, and each split keeps one copy of a question.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rlpost.data.io import write_rows

DATA_SOURCE = "reasoning_gym/chain_sum"
DIFFICULTY = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}  # about 20,000 distinct questions
TEST_SHARE = 10  # one question in TEST_SHARE is held out


def held_out(question: str) -> bool:
    return int.from_bytes(hashlib.blake2b(question.encode(), digest_size=4).digest(), "little") % TEST_SHARE == 0


def make_row(question: str, answer: str, index: int, split: str) -> dict:
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": question}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"split": split, "index": index, "question": question},
    }


def problems(train_size: int, test_size: int, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Distinct (question, answer) pairs for each split, drawn in reasoning-gym's order for the seed."""
    import reasoning_gym

    want = {"train": train_size, "test": test_size}
    out: dict[str, dict[str, str]] = {"train": {}, "test": {}}
    batch, size = 0, 2000
    while any(len(out[s]) < want[s] for s in out):
        if batch > 50:
            raise ValueError(f"chain_sum {DIFFICULTY} has too few distinct problems for {want}")
        # item i of a dataset is drawn from seed + i, so consecutive batches start `size` seeds apart
        for item in reasoning_gym.create_dataset("chain_sum", size=size, seed=seed * 10**6 + batch * size,
                                                 **DIFFICULTY):
            split = "test" if held_out(item["question"]) else "train"
            if len(out[split]) < want[split]:
                out[split].setdefault(item["question"], str(item["answer"]))
        batch += 1
    return list(out["train"].items()), list(out["test"].items())


def build_default(out_dir: str | Path, train_size: int, test_size: int, seed: int) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    train, test = problems(train_size, test_size, seed)
    return (write_rows([make_row(q, a, i, "train") for i, (q, a) in enumerate(train)], out_dir / "train.parquet"),
            write_rows([make_row(q, a, i, "test") for i, (q, a) in enumerate(test)], out_dir / "test.parquet"))
