import pytest
import torch

from rlpost.megatron.micro_batches import budget_groups, make_micro_batches, restore


def test_budget_groups_respect_the_budget_and_cover_every_sample():
    lengths = [30, 500, 12, 480, 64, 64, 900, 5]
    groups = budget_groups(lengths, 1000)
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert all(len(g) * max(lengths[i] for i in g) <= 1000 for g in groups)
    assert groups[0] == [6]  # 900 alone; 500 and 480 pair (2 x 500)
    assert groups[1] == [1, 3]
    with pytest.raises(ValueError, match="sample 6 has 900 tokens, more than max_tokens_per_micro_batch = 100"):
        budget_groups(lengths, 100)


def test_budget_packing_pays_fewer_padded_tokens_than_fixed_size():
    gen = torch.Generator().manual_seed(0)
    lengths = (torch.empty(64).exponential_(1 / 200, generator=gen) + 16).long().clamp(max=2048).tolist()
    budget = sum(lengths) // 8
    budget = max(budget, max(lengths))
    groups = budget_groups(lengths, budget)
    packed = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    fixed = sum(8 * max(lengths[i : i + 8]) for i in range(0, 64, 8))
    assert packed < fixed


def test_micro_batches_trimmed_and_restored():
    lengths = [3, 6, 2, 5]
    ids = torch.zeros(4, 6, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.arange(1, n + 1) + 10 * i
    mask = (ids[:, 1:] > 0).float()
    mbs, groups = make_micro_batches({"input_ids": ids, "loss_mask": mask}, lengths, max_tokens=10)
    # longest first: 6 alone (6 + 5 would cost 12), then 5 and 3 (2 x 5 = 10), then 2
    assert groups == [[1], [3, 0], [2]]
    assert [tuple(mb["input_ids"].shape) for mb in mbs] == [(1, 6), (2, 5), (1, 2)]
    assert [tuple(mb["loss_mask"].shape) for mb in mbs] == [(1, 5), (2, 4), (1, 1)]
    assert mbs[1]["input_ids"].tolist() == [[31, 32, 33, 34, 35], [1, 2, 3, 0, 0]]
    back = restore([mb["loss_mask"] for mb in mbs], groups, width=5)
    assert torch.equal(back, mask)
    fixed, groups = make_micro_batches({"input_ids": ids}, lengths, micro_batch_size=3)
    assert groups == [[0, 1, 2], [3]] and fixed[1]["input_ids"].shape == (1, 5)
    with pytest.raises(ValueError, match="exactly one"):
        make_micro_batches({"input_ids": ids}, lengths)
