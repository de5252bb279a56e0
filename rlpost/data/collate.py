"""PromptSamples -> Batch: left-padded prompt ids for generation plus per-sample fields for rewards and tools."""

from __future__ import annotations

from typing import Sequence

import torch

from rlpost.batch import Batch
from rlpost.data.dataset import PromptSample


def collate(samples: Sequence[PromptSample], pad_token_id: int) -> Batch:
    width = max(len(s.prompt_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        ids[row, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids, dtype=torch.long)
        mask[row, width - len(s.prompt_ids):] = 1
    return Batch(
        tensors={"prompt_ids": ids, "prompt_mask": mask},
        fields={
            "uid": [s.uid for s in samples],
            "data_source": [s.data_source for s in samples],
            "messages": [s.messages for s in samples],
            "ground_truth": [s.ground_truth for s in samples],
            "ability": [s.ability for s in samples],
            "extra_info": [s.extra_info for s in samples],
            "images": [s.images for s in samples],
        },
    )
