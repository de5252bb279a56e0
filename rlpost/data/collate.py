"""PromptSamples -> Batch: left-padded prompt ids for generation plus per-sample fields for rewards and tools; the
streams of such batches a run draws from."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from rlpost.batch import Batch
from rlpost.data.dataset import PromptSample, RLDataset
from rlpost.data.images import PromptVision, data_uri
from rlpost.data.sampler import BatchSampler


def collate(samples: Sequence[PromptSample], pad_token_id: int, vision: PromptVision | None = None) -> Batch:
    """With a vision-language model, each sample also carries its images as the servers take them (`image_data`,
    data URIs) and as the trainer's model reads them (`multi_modal_inputs`: pixel values and grids, {} without
    images); its prompt_ids hold each image's run of image tokens."""
    width = max(len(s.prompt_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        ids[row, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids, dtype=torch.long)
        mask[row, width - len(s.prompt_ids):] = 1
    images = {}
    if vision is not None:
        images = {"image_data": [[data_uri(data) for data in s.images] for s in samples],
                  "multi_modal_inputs": [vision.model_inputs(s.images) for s in samples]}
    return Batch(
        tensors={"prompt_ids": ids, "prompt_mask": mask},
        fields=images | {
            "uid": [s.uid for s in samples],
            "data_source": [s.data_source for s in samples],
            "messages": [s.messages for s in samples],
            "ground_truth": [s.ground_truth for s in samples],
            "ability": [s.ability for s in samples],
            "extra_info": [s.extra_info for s in samples],
        },
    )


class PromptBatches:
    """Collated prompt batches in the sampler's order, one per generation round (dynamic sampling pulls more than
    one per step); the sampler's state is what a checkpoint keeps."""

    def __init__(self, dataset: RLDataset, sampler: BatchSampler, pad_token_id: int):
        self.dataset, self.sampler, self.pad_token_id = dataset, sampler, pad_token_id

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return collate([self.dataset[i] for i in next(self.sampler)], self.pad_token_id, self.dataset.vision)


def in_order(dataset: RLDataset, batch_size: int, limit: int | None, pad_token_id: int) -> Iterator[Batch]:
    """The first `limit` prompts (all when None), in file order, batch_size at a time: a validation pass."""
    n = min(len(dataset), limit or len(dataset))
    for start in range(0, n, batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, n))], pad_token_id, dataset.vision)
