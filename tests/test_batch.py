import pickle
import random

import pytest
import torch

from rlpost.batch import Batch, balanced_partitions, restore_order


def make(n=6):
    return Batch(
        {"ids": torch.arange(n * 2).view(n, 2), "w": torch.arange(n, dtype=torch.float32)},
        {"uid": [f"u{i}" for i in range(n)]},
        {"step": 3},
    )


def test_lengths_must_agree_and_keys_are_unique():
    with pytest.raises(ValueError, match="disagree"):
        Batch({"a": torch.zeros(3)}, {"b": [1, 2]})
    with pytest.raises(ValueError, match="both as tensor and field"):
        Batch({"a": torch.zeros(2)}, {"a": [1, 2]})
    b = make()
    with pytest.raises(ValueError, match="has 2 samples, the batch has 6"):
        b["x"] = torch.zeros(2)
    with pytest.raises(KeyError, match="has no 'nope'"):
        b["nope"]


def test_select_split_chunk_concat():
    b = make()
    s = b.select([4, 1])
    assert s["ids"].tolist() == [[8, 9], [2, 3]] and s["uid"] == ["u4", "u1"] and s.meta == {"step": 3}
    assert [len(p) for p in b.split(4)] == [4, 2]
    parts = b.chunk(3)
    assert [p["uid"] for p in parts] == [["u0", "u1"], ["u2", "u3"], ["u4", "u5"]]
    back = Batch.concat(parts)
    assert torch.equal(back["ids"], b["ids"]) and back["uid"] == b["uid"]
    with pytest.raises(ValueError, match="pad_to_multiple"):
        b.chunk(4)
    with pytest.raises(IndexError):
        b.select([6])
    with pytest.raises(ValueError, match="beyond the sample dimension"):
        Batch.concat([b, Batch({"ids": torch.zeros(1, 3, dtype=torch.long), "w": torch.zeros(1)}, {"uid": ["x"]})])


def test_pad_and_unpad_for_dp_dispatch():
    b = make(5)
    padded, pad = b.pad_to_multiple(4)
    assert pad == 3 and len(padded) == 8 and padded["uid"][5:] == ["u0", "u1", "u2"]
    assert padded.unpad(pad)["uid"] == b["uid"]
    same, zero = b.pad_to_multiple(5)
    assert zero == 0 and same is b


def test_setitem_adds_tensor_or_field():
    b = make(2)
    b["score"] = torch.tensor([1.0, 2.0])
    b["text"] = ("a", "b")
    assert "score" in b.tensors and b.fields["text"] == ["a", "b"]


def test_balanced_partitions_equal_sizes_and_even_load():
    rng = random.Random(0)
    weights = [rng.choice([10, 20, 400, 800]) for _ in range(64)]
    parts = balanced_partitions(weights, 4)
    assert sorted(i for p in parts for i in p) == list(range(64))
    assert [len(p) for p in parts] == [16] * 4
    loads = [sum(weights[i] for i in p) for p in parts]
    contiguous = [sum(weights[i * 16:(i + 1) * 16]) for i in range(4)]
    assert max(loads) - min(loads) <= max(weights)
    assert max(loads) - min(loads) < max(contiguous) - min(contiguous)
    # known optimum: {9,1} {8,2} {7,3}, all sums 10
    parts = balanced_partitions([1, 2, 3, 7, 8, 9], 3)
    assert sorted(sum([1, 2, 3, 7, 8, 9][i] for i in p) for p in parts) == [10, 10, 10]
    with pytest.raises(ValueError, match="cannot split 2 samples into 3"):
        balanced_partitions([1, 2], 3)


def test_split_balanced_and_restore_order():
    b = make(8)
    b["n_tokens"] = torch.tensor([100, 1, 1, 1, 100, 1, 1, 100])
    parts, idx = b.split_balanced(2, "n_tokens")
    assert [len(p) for p in parts] == [4, 4]
    assert sorted(int(p["n_tokens"].sum()) for p in parts) == [103, 202]  # 100+1+1+1 and 100+100+1+1
    restored = restore_order(parts, idx)
    assert restored["uid"] == b["uid"] and torch.equal(restored["ids"], b["ids"])


def test_pickle_ships_tensors_out_of_band_and_keeps_bf16():
    b = make(4)
    b["h"] = torch.randn(4, 3).to(torch.bfloat16)
    buffers = []
    data = pickle.dumps(b, protocol=5, buffer_callback=buffers.append)
    # out of band: the tensor bytes are not inside the pickle stream (what Ray's zero-copy path relies on)
    assert len(buffers) == 3 and len(data) < 1000
    back = pickle.loads(data, buffers=buffers)
    assert back["h"].dtype == torch.bfloat16 and torch.equal(back["h"], b["h"])
    assert torch.equal(back["ids"], b["ids"]) and back["uid"] == b["uid"] and back.meta == {"step": 3}
    back["ids"][0, 0] = 99  # received tensors are writable
