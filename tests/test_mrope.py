"""rlpost's mRoPE positions against transformers' Qwen2.5-VL get_rope_index on multi-image, multi-turn layouts."""

import pytest
import torch

from rlpost.models.mrope import image_tokens, mrope_positions
from rlpost.testing.tiny_models import tiny_vl_config, tiny_vl_tokenizer


@pytest.fixture(scope="module")
def hf_model():
    from transformers import Qwen2_5_VLModel

    tokenizer = tiny_vl_tokenizer()
    return Qwen2_5_VLModel(tiny_vl_config(len(tokenizer), tokenizer)).eval(), tokenizer


def layout(tokenizer, turns):
    """Chat turns whose content mixes text and (t, h, w) image grids -> token ids with each image expanded to its
    image tokens, and the grids in order."""
    ids, grids = [], []
    for role, parts in turns:
        ids += tokenizer(f"<|im_start|>{role}\n", add_special_tokens=False)["input_ids"]
        for part in parts:
            if isinstance(part, tuple):
                grids.append(part)
                ids += tokenizer.convert_tokens_to_ids(["<|vision_start|>"])
                ids += [tokenizer.convert_tokens_to_ids("<|image_pad|>")] * image_tokens(part, 2)
                ids += tokenizer.convert_tokens_to_ids(["<|vision_end|>"])
            else:
                ids += tokenizer(part, add_special_tokens=False)["input_ids"]
        ids += tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    return ids, grids


LAYOUTS = {
    "two images of different sizes": [("user", [(1, 4, 6), "Compare with", (1, 6, 4), "and find x."])],
    "two images in a row": [("user", [(1, 2, 2), (1, 4, 2), "Which is taller?"])],
    "multi-turn, a tool returns an image": [
        ("system", ["You are a geometry expert."]), ("user", [(1, 8, 6), "Find x."]),
        ("assistant", ["<tool_call>{\"name\": \"zoom\"}</tool_call>"]), ("tool", [(1, 4, 4), "zoomed"]),
        ("assistant", ["x = 70"]), ("user", ["Now the next one:", (1, 2, 8)]), ("assistant", ["36"])],
    "text only": [("user", ["What is 2 + 2?"]), ("assistant", ["4"])],
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_positions_equal_transformers(hf_model, name):
    model, tokenizer = hf_model
    ids, grids = layout(tokenizer, LAYOUTS[name])
    ours = mrope_positions(ids, grids, model.config.image_token_id, 2)
    if not grids:  # transformers needs an image to compute 3D positions; text alone is 1-D in all three sections
        assert torch.equal(ours, torch.arange(len(ids)).expand(3, -1))
        return
    input_ids = torch.tensor([ids])
    types = (input_ids == model.config.image_token_id).int()
    theirs, _ = model.get_rope_index(input_ids, types, image_grid_thw=torch.tensor(grids))
    assert torch.equal(ours, theirs[:, 0])


def test_right_padded_batch_matches_per_sequence(hf_model):
    model, tokenizer = hf_model
    a, grids_a = layout(tokenizer, LAYOUTS["two images of different sizes"])
    b, grids_b = layout(tokenizer, [("user", [(1, 2, 4), "short"])])
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([a, b + [pad] * (len(a) - len(b))])
    mask = torch.tensor([[1] * len(a), [1] * len(b) + [0] * (len(a) - len(b))])
    types = (input_ids == model.config.image_token_id).int()
    theirs, _ = model.get_rope_index(input_ids, types, image_grid_thw=torch.tensor(grids_a + grids_b),
                                     attention_mask=mask)
    assert torch.equal(mrope_positions(a, grids_a, model.config.image_token_id, 2), theirs[:, 0])
    assert torch.equal(mrope_positions(b, grids_b, model.config.image_token_id, 2), theirs[:, 1, :len(b)])


def test_images_with_no_token_between_are_told_apart_by_their_grids():
    """transformers groups a run of image tokens as one image; rlpost takes each grid's count (hand-computed)."""
    positions = mrope_positions([1, 9, 9, 9, 2], [(1, 2, 2), (1, 4, 2)], 9, 2)
    assert positions.tolist() == [[0, 1, 2, 2, 4], [0, 1, 2, 3, 4], [0, 1, 2, 2, 4]]


def test_image_token_counts_that_do_not_add_up_are_errors():
    image = 9
    with pytest.raises(ValueError, match=r"image 0 \(grid \(1, 4, 4\)\) needs 4 image tokens from index 1, the "
                                         r"sequence has 3"):
        mrope_positions([1, 9, 9, 9, 2], [(1, 4, 4)], image, 2)
    with pytest.raises(ValueError, match="image token at index 5 belongs to no image"):
        mrope_positions([1, 9, 9, 9, 9, 9], [(1, 4, 4)], image, 2)
    with pytest.raises(ValueError, match=r"2 image grid\(s\) given, the sequence has image tokens for 1"):
        mrope_positions([1, 9, 9, 9, 9], [(1, 4, 4), (1, 2, 2)], image, 2)


def test_an_image_token_the_policy_sampled_is_text():
    """The image's run holds its grid's tokens; a later <|image_pad|> that is no image slot takes a text position."""
    ids = [1, 9, 9, 9, 9, 2, 9, 3]
    slots = [False, True, True, True, True, False, False, False]
    positions = mrope_positions(ids, [(1, 4, 4)], 9, 2, slots)
    assert positions.tolist() == [[0, 1, 1, 1, 1, 3, 4, 5], [0, 1, 1, 2, 2, 3, 4, 5], [0, 1, 2, 1, 2, 3, 4, 5]]
    with pytest.raises(ValueError, match="belongs to no image"):
        mrope_positions(ids, [(1, 4, 4)], 9, 2)


def test_image_runs_collapse_to_the_one_pad_per_image_sglang_expands():
    from rlpost.models.image_inputs import collapse_image_pads, expand_image_pads

    start, end, pad = 7, 8, 9
    expanded = [1, start, pad, pad, pad, pad, end, 2, start, pad, end, pad, 3]  # the last pad: sampled, text
    compact = collapse_image_pads(expanded, pad)
    assert compact == [1, start, pad, end, 2, start, pad, end, pad, 3]
    assert expand_image_pads([1, start, pad, end, 2, start, pad, end, 3], [4, 1], pad) == \
        [1, start, pad, pad, pad, pad, end, 2, start, pad, end, 3]
