"""`rlpost eval`: a model's accuracy on a dataset through the trainer's own validation (same prompts, sampling,
seeds, reward and accuracy), served by an embedded engine on loopback. The model is an HF directory, a named asset,
a checkpoint directory (its `actor_hf` export) or a run directory (its latest complete checkpoint)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlpost.atomic import atomic_file
from rlpost.config.schema import RLConfig
from rlpost.models.hf import load_tokenizer, resolve_model_path
from rlpost.trainer import checkpoints

HF_EXPORT = "actor_hf"  # a checkpoint's actor weights as an HF directory


def resolve_model(spec: str) -> Path:
    path = Path(spec).expanduser()
    if (path / HF_EXPORT).is_dir():
        return path / HF_EXPORT
    if checkpoints.checkpoint_root(path).is_dir():
        complete = checkpoints.complete_checkpoints(checkpoints.checkpoint_root(path))
        if not complete or not (complete[-1][1] / HF_EXPORT).is_dir():
            raise FileNotFoundError(f"run directory '{path}' has no complete checkpoint with an HF export "
                                    f"('{HF_EXPORT}/', written by checkpoints since 2026-12-06)")
        return complete[-1][1] / HF_EXPORT
    return resolve_model_path(spec)


def evaluate(cfg: RLConfig, model: str, data_files: list[str], progress=None) -> dict:
    """cfg's data, rollout.val_sampling and reward applied to `data_files` (its data.val_max_samples first prompts);
    returns the model, the settings and validation's metrics."""
    from rlpost.data.dataset import RLDataset
    from rlpost.data.images import PromptVision
    from rlpost.rewards.reward import Reward
    from rlpost.rollout.rollout import Rollout
    from rlpost.trainer.validation import validate
    from rlpost.workers.rollout import EngineHost

    path = resolve_model(model)
    d, r = cfg.data, cfg.rollout
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, placement="split"))  # memory stays put
    tokenizer = load_tokenizer(path, cfg.actor.chat_template)
    host = EngineHost(str(path), r, d.max_prompt_length + d.max_response_length, cfg.trainer.seed, host="127.0.0.1")
    vision = PromptVision.for_model(path)
    rollout = Rollout(cfg, tokenizer, vision)
    try:
        rollout.connect([host.url], progress)
        data = RLDataset.from_config(data_files, tokenizer, d, rollout.tool_schemas, vision)
        metrics = validate(rollout, data, Reward(cfg.reward, d.max_response_length), cfg)
    finally:
        rollout.close()
        host.stop()
    s = r.val_sampling
    return {"model": str(path), "data": list(data_files), "prompts": min(len(data), d.val_max_samples or len(data)),
            "n": s.n, "temperature": s.temperature, "max_new_tokens": d.max_response_length, "metrics": metrics}


def write(result: dict, out: str | Path) -> Path:
    with atomic_file(out) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1))
    return Path(out)
