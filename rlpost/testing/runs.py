"""A tiny training run: a random checkpoint and GSM8K-style rows it can be scored on, with the config overrides
that point a recipe at them (small batches, short responses, float32, no console bar)."""

from __future__ import annotations

from pathlib import Path

from rlpost.data.io import write_rows
from rlpost.data.preprocess.gsm8k import make_row
from rlpost.testing.tiny_models import make_tiny_checkpoint


def make_tiny_run(root: str | Path, arch: str = "qwen2", n_train: int = 16, n_val: int = 4, **model) -> dict:
    root = Path(root)
    model_dir = make_tiny_checkpoint(arch, root / "model", **model)
    rows = [make_row(f"What is {a} plus {a + 3}?", f"{a} + {a + 3} = {2 * a + 3}\n#### {2 * a + 3}", a, "train",
                     "openai/gsm8k", False) for a in range(n_train + n_val)]
    train = write_rows(rows[:n_train], root / "train.parquet")
    val = write_rows(rows[n_train:], root / "val.parquet")
    return {"model": model_dir, "train": train, "val": val, "overrides": [
        f"actor.model_path={model_dir}", f"data.train_files=[{train}]", f"data.val_files=[{val}]",
        "data.max_prompt_length=128", "data.max_response_length=16", "data.train_batch_size=4",
        "actor.ppo_mini_batch_size=2", "actor.micro_batch_size=4", "actor.optim.lr=1e-3", "rollout.sampling.n=2",
        "rollout.dtype=float32", "rollout.max_num_seqs=16", "trainer.logger=[jsonl]",
        f"trainer.output_dir={root / 'runs'}",
        "trainer.val_every=0", "trainer.val_before_train=false", "reward.kwargs={method: flexible}",
    ]}
