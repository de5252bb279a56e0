"""Geometry3K: verl's reward rule and tool, the offline drawn data in verl's geo3k row format, and the per-row image
checks."""

import asyncio
import io
import math
import re

import pytest
from PIL import Image

from rlpost.cli import main
from rlpost.data.dataset import RLDataset
from rlpost.data.images import check_placeholders, decode, image_bytes, to_content_parts
from rlpost.data.io import read_rows, write_rows
from rlpost.data.preprocess import geometry3k
from rlpost.data.schema import RowError
from rlpost.rewards.geo3k import compute_score
from rlpost.rewards.registry import RewardScorer
from rlpost.tools.answer_check import REPEAT_PENALTY
from rlpost.tools.registry import load_tools

GEO3K_TOOL = """tools:
  - class_name: verl.tools.geo3k_tool.Geo3kTool
    config: {type: native}
    tool_schema:
      type: function
      function:
        name: calc_geo3k_reward
        description: A tool for calculating the reward of geo3k
        parameters:
          type: object
          properties:
            answer: {type: string, description: "The answer to the question, enclosed in \\\\boxed{}"}
          required: [answer]
"""


def load_image(entry, source, row, field, base_dir=None):
    return decode(image_bytes(entry, source, row, field, base_dir), source, row, field)


def png(width=56, height=42) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("response, truth, score", [
    ("<think>180 - 50 - 60</think> The answer is \\boxed{70}", "70", 1.0),  # right, formatted: 0.9 + 0.1
    ("The answer is \\boxed{70}", "70", 0.9),  # right, no <think>
    ("<think>hm</think> \\boxed{71}", "70", 0.1),  # formatted, wrong
    ("<think>x</think> 70", "70", 0.0),  # no box: nothing to grade, and the format needs one
    ("<think>a</think>\\boxed{2\\sqrt{13}}", "2 \\sqrt{13}", 1.0),  # LaTeX spacing does not matter
    ("<think>a</think>\\boxed{\\frac{1}{2}}", "0.5", 1.0),  # sympy equality
    ("<think>a</think>\\boxed{37.7}", "37.70", 1.0),
])
def test_geo3k_reward_is_verls_rule(response, truth, score):
    assert compute_score(response, truth) == pytest.approx(score)
    scores, extras = RewardScorer().score([response], ["hiyouga/geometry3k"], [truth])
    assert scores == [pytest.approx(score)] and extras[0]["acc"] == (score >= 0.9)


def test_verls_geo3k_tool_class_runs_as_rlposts(tmp_path):
    path = tmp_path / "tool.yaml"
    path.write_text(GEO3K_TOOL)
    tool = load_tools(path)["calc_geo3k_reward"]
    assert type(tool).__module__ == "rlpost.tools.geo3k"

    async def episode():
        instance, _ = await tool.create(ground_truth="2\\sqrt{13}")
        steps = [await tool.execute(instance, {"answer": a}) for a in ("7", "2\\sqrt{13}", "5", "2 \\sqrt{13}")]
        return steps, await tool.calc_reward(instance)

    steps, final = asyncio.run(episode())
    # the reward compared with is the last submission's (verl's Geo3kTool), not the best so far
    assert [(r.text, step) for r, step, _ in steps] == [
        ("Current parsed answer='7' reward=0.0", REPEAT_PENALTY),
        ("Current parsed answer='2\\\\sqrt{13}' reward=1.0", 0.0),
        ("Current parsed answer='5' reward=0.0", REPEAT_PENALTY),
        ("Current parsed answer='2 \\\\sqrt{13}' reward=1.0", 0.0),
    ]
    assert final == 1.0


@pytest.mark.parametrize("n, text", [(12, "2\\sqrt{3}"), (25, "5"), (7, "\\sqrt{7}"), (72, "6\\sqrt{2}")])
def test_radicals_are_written_as_geometry3k_writes_them(n, text):
    assert geometry3k.radical(n) == text


def test_preprocess_writes_verls_geo3k_rows_with_computed_answers(tmp_path):
    out = tmp_path / "geo"
    assert main(["preprocess", "geometry3k", "--out-dir", str(out), "--train-size", "60", "--test-size", "12",
                 "--multiturn"]) == 0
    train, test = read_rows(out / "train.parquet"), read_rows(out / "test.parquet")
    assert (len(train), len(test)) == (60, 12)
    row = train[0]
    assert set(row) == {"data_source", "prompt", "images", "ability", "reward_model", "extra_info"}
    assert row["data_source"] == "hiyouga/geometry3k" and row["ability"] == "math"
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert '{"name": "calc_geo3k_reward", "arguments": {"answer": ' in row["prompt"][0]["content"]  # the call itself
    assert row["prompt"][1]["content"].startswith("<image>") and "\\boxed{}" in row["prompt"][1]["content"]
    truth = row["reward_model"]["ground_truth"]
    assert row["extra_info"]["tools_kwargs"] == {"calc_geo3k_reward": {"create_kwargs": {"ground_truth": truth}}}
    sizes = set()
    for split, rows in (("train", train), ("test", test)):
        for i, r in enumerate(rows):
            assert len(r["images"]) == 1 and r["images"][0]["path"] is None
            image = load_image(r["images"][0], split, i, "images[0]")
            sizes.add(image.size)
            assert r["extra_info"]["split"] == split
    assert len(sizes) > 3  # figures of several sizes: prompts with different numbers of image tokens
    keys = {split: {p.key for p, _ in drawn} for split, drawn in geometry3k.problems(60, 12, 0).items()}
    assert len(keys["train"]) == 60 and not keys["train"] & keys["test"]


def squared(radical_text: str) -> int:
    """'k\\sqrt{m}' -> k^2 m, read independently of geometry3k.radical."""
    match = re.fullmatch(r"(\d*)(?:\\sqrt\{(\d+)\})?", radical_text)
    k, m = int(match.group(1) or 1), int(match.group(2) or 1)
    return k * k * m


def test_drawn_answers_follow_from_the_numbers():
    drawn = geometry3k.problems(300, 0, 1)["train"]
    assert {p.kind for p, _ in drawn} == {"triangle_angle", "hypotenuse", "supplementary", "rectangle_area",
                                          "circumference"}
    for p, _ in drawn:
        if p.kind == "hypotenuse":
            assert squared(p.answer) == p.numbers[0] ** 2 + p.numbers[1] ** 2, p
            continue
        value = {"triangle_angle": lambda a, b: 180 - a - b, "supplementary": lambda a: 180 - a,
                 "rectangle_area": lambda a, b: a * b, "circumference": lambda r: round(2 * math.pi * r, 1)
                 }[p.kind](*p.numbers)
        assert float(p.answer) == value and value > 0, p


def test_image_placeholders_become_content_parts():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "<image>Compare with <image> and find x."}]
    check_placeholders(messages, 2, "f", 0, "prompt", "images")
    assert to_content_parts(messages, "f", 0, "prompt") == [
        messages[0],
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare with "}, {"type": "image"},
                                     {"type": "text", "text": " and find x."}]},
    ]
    with pytest.raises(RowError, match=r"f row 3: field 'prompt\[0\].content' has a <video> placeholder"):
        to_content_parts([{"role": "user", "content": "<video>What happens?"}], "f", 3, "prompt")


def geo_row(images, content="<image>Find x."):
    return {"data_source": "hiyouga/geometry3k", "prompt": [{"role": "user", "content": content}],
            "images": images, "ability": "math", "reward_model": {"style": "rule", "ground_truth": "70"}}


@pytest.mark.parametrize("images, content, field, problem", [
    ([{"bytes": png(), "path": None}] * 2, "<image>Find x.", "images", "holds 2 image\\(s\\) but 'prompt' has 1"),
    ([{"bytes": png(), "path": None}], "Find x.", "images", "holds 1 image\\(s\\) but 'prompt' has 0 '<image>'"),
    ([{"bytes": b"\x89PNG not really", "path": None}], "<image>Find x.", "images\\[0\\]",
     "is not a readable image: UnidentifiedImageError"),
    ([{"bytes": None, "path": "figures/missing.png"}], "<image>Find x.", "images\\[0\\]",
     "is not a readable image \\(file 'figures/missing.png'\\): FileNotFoundError"),
    ([{"bytes": png(401, 2), "path": None}], "<image>Find x.", "images\\[0\\]", "is 401x2 pixels: an aspect ratio"),
])
def test_bad_image_rows_fail_at_start_up_naming_file_row_and_field(tmp_path, tokenizer, images, content, field,
                                                                   problem):
    path = write_rows([geo_row([{"bytes": png(), "path": None}]), geo_row(images, content)], tmp_path / "g.parquet")
    with pytest.raises(RowError, match=rf"g.parquet row 1: field '{field}' {problem}"):
        RLDataset([path], tokenizer, max_prompt_length=100)


def test_an_image_path_is_read_relative_to_the_data_file(tmp_path):
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "a.png").write_bytes(png(30, 20))
    assert load_image("figs/a.png", "f", 0, "images[0]", tmp_path).size == (30, 20)
    assert load_image({"bytes": None, "path": str(tmp_path / "figs" / "a.png")}, "f", 0, "images[0]").size == (30, 20)


def test_valid_image_rows_for_a_text_only_model_fail_naming_the_row(tmp_path, tokenizer):
    """Until the model can see, the images would be dropped without a word: loading them is an error."""
    geometry3k.build_default(tmp_path, 4, 1, 0)
    with pytest.raises(RowError, match=r"train.parquet row 0: field 'images' holds 1 image\(s\), but the model is "
                                       r"text-only"):
        RLDataset([tmp_path / "train.parquet"], tokenizer, max_prompt_length=400)


def test_a_vl_model_reads_geo3k_rows_with_their_image_tokens(tmp_path):
    """Through the VL chat template and image processor: each figure becomes its run of image tokens (counted against
    max_prompt_length), and a collated batch carries the figure for the servers and the pixels for the actor."""
    from transformers import AutoTokenizer

    from rlpost.data.collate import collate
    from rlpost.data.images import PromptVision
    from rlpost.models.mrope import image_tokens
    from rlpost.testing.tiny_models import make_tiny_vl_checkpoint

    model = make_tiny_vl_checkpoint(tmp_path / "m")
    vision, tokenizer = PromptVision.for_model(model), AutoTokenizer.from_pretrained(model)
    geometry3k.build_default(tmp_path / "d", 6, 1, 0)
    data = RLDataset([tmp_path / "d" / "train.parquet"], tokenizer, 400, vision=vision)
    batch = collate(data.samples[:3], tokenizer.pad_token_id, vision)
    for sample, inputs, uris in zip(data.samples, batch["multi_modal_inputs"], batch["image_data"]):
        (grid,) = inputs["image_grid_thw"].tolist()
        assert sample.prompt_ids.count(vision.image_token_id) == image_tokens(grid, 2) > 1
        assert inputs["pixel_values"].shape[0] == grid[0] * grid[1] * grid[2]
        assert len(uris) == 1 and uris[0].startswith("data:image;base64,")
    with pytest.raises(RowError, match=r"image tokens included; a prompt with images is not cut"):
        RLDataset([tmp_path / "d" / "train.parquet"], tokenizer, 40, vision=vision, filter_overlong=False,
                  truncation="left")
