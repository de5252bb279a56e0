"""Images in multi-turn rollouts: a scripted tiny Qwen2.5-VL (it calls verl's ImageZoomInTool at every turn; its
attention is random, so every log-prob depends on the images and their positions) served by the embedded engine.
The tool's crops join the conversation as images: the sample holds each image's full run of pads, all images'
pixels in conversation order, and log-probs equal to transformers' forward of the whole conversation. Also: image
tokens count against the response budget, a pad the policy writes is text and ends the trajectory, a text-only
model given a tool image fails, and the zoom tool's boxes and image conversions."""

import asyncio
import io

import pytest
import torch
import yaml
from PIL import Image

from rlpost.data.images import PromptVision, data_uri, open_image, tool_image
from rlpost.models.image_inputs import expand_image_pads
from rlpost.rollout.agent_loop import AgentSettings, Trajectory
from rlpost.rollout.client import SGLangClient
from rlpost.testing.tiny_models import make_scripted_checkpoint
from rlpost.tools import load_tools, openai_schemas
from rlpost.tools.image_zoom import FAILED_CALL_REWARD, fit_box
from tests.test_agent_loop import serve

BOX = [10, 5, 70, 45]
CALL = '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 5, 70, 45]}}'
SEGMENTS = ["<tool_call>", CALL, "</tool_call>"]
TOLERANCE = 1e-4


def picture(width: int, height: int, seed: int) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


IMAGE = picture(100, 80, seed=1)


@pytest.fixture(scope="module")
def caller(tmp_path_factory):
    return make_scripted_checkpoint(tmp_path_factory.mktemp("vl_caller"), SEGMENTS, vision=True)


@pytest.fixture(scope="module")
def zoom(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoom") / "tools.yaml"
    path.write_text(yaml.safe_dump({"tools": [{"class_name": "verl.tools.image_zoom_in_tool.ImageZoomInTool",
                                               "config": {"type": "native", "num_workers": 2}}]}))
    return load_tools(path)


def conversation(url, tokenizer, tools, vision, **settings):
    """One trajectory of a prompt with IMAGE (a text prompt for a text-only model), the zoom tool given IMAGE,
    greedy."""
    fields = {"uid": "u", "tools_kwargs": {"image_zoom_in_tool": {"create_kwargs": {"image": {"bytes": IMAGE}}}}}
    messages = [{"role": "user", "content": "Find x."}]
    if vision is not None:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]}]
        fields |= {"image_data": [data_uri(IMAGE)], "multi_modal_inputs": vision.model_inputs([IMAGE])}

    async def go():
        client = SGLangClient([url])
        try:
            options = AgentSettings(**{"max_response_tokens": 600, "sanity_check": True, **settings})
            return await Trajectory(client, tokenizer, messages, tools=tools, interaction=None, fields=fields,
                                    settings=options, sampling={"temperature": 0.0}, vision=vision).run()
        finally:
            await client.close()

    return messages, asyncio.run(go())


def hf_logprobs(model_dir, ids, image_mask, inputs):
    """log p(token_t | tokens_<t) for t >= 1 from transformers, positions from its own get_rope_index."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    positions, _ = hf.model.get_rope_index(x, image_mask.int()[None], image_grid_thw=inputs["image_grid_thw"])
    with torch.no_grad():
        logits = hf(input_ids=x, pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                    position_ids=positions).logits[0, :-1]
    return torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None])[:, 0]


def test_tool_images_join_the_conversation_and_log_probs_equal_transformers(caller, zoom):
    vision = PromptVision.for_model(caller)
    with serve(caller) as (url, tokenizer):
        messages, sample = conversation(url, tokenizer, zoom, vision, max_assistant_turns=3)
    pad = vision.image_token_id
    crop = Image.open(io.BytesIO(IMAGE)).convert("RGB").crop(BOX)
    expected_inputs = vision.model_inputs([IMAGE, tool_image(crop, "zoom", 0), tool_image(crop, "zoom", 0)])
    inputs = sample.fields["multi_modal_inputs"]
    assert torch.equal(inputs["image_grid_thw"], expected_inputs["image_grid_thw"])
    assert torch.equal(inputs["pixel_values"], expected_inputs["pixel_values"])
    tokens = (inputs["image_grid_thw"].prod(-1) // vision.merge ** 2).tolist()
    assert tokens[0] != tokens[1]  # the crop's run differs from the prompt image's: order matters
    assert sample.fields["image_data"][0] == data_uri(IMAGE) and len(sample.fields["image_data"]) == 3
    # the prompt as the dataset writes it: the chat template's one pad, expanded to the image's run
    rendered = tokenizer.apply_chat_template(messages, tools=openai_schemas(zoom), add_generation_prompt=True,
                                             tokenize=False)
    assert sample.prompt_ids == expand_image_pads(tokenizer(rendered, add_special_tokens=False)["input_ids"],
                                                  tokens[:1], pad)
    # each tool turn holds its crop's full run, not trained on
    in_response = [(t, m, lp) for t, m, lp in zip(sample.response_ids, sample.response_mask,
                                                   sample.response_log_probs) if t == pad]
    assert len(in_response) == tokens[1] + tokens[2] and all(m == 0 and lp == 0.0 for _, m, lp in in_response)
    assert sample.fields["tool_calls"] == 2 and sample.fields["rollout_reward_scores"]["tool_rewards"] == [0.0, 0.0]
    assert [m["role"] for m in sample.fields["messages_out"]] == ["user", "assistant", "tool"] * 1 + [
        "assistant", "tool", "assistant"]
    # the engine read the images and positions of every turn as transformers does
    ids = sample.prompt_ids + sample.response_ids
    mask = torch.tensor([0] * len(sample.prompt_ids) + sample.response_mask)
    expected = hf_logprobs(caller, ids, (torch.tensor(ids) == pad) & (mask == 0), inputs)
    got = torch.tensor(sample.response_log_probs)
    trained = torch.tensor(sample.response_mask).bool()
    assert trained.sum() == 12
    assert (got[trained] - expected[len(sample.prompt_ids) - 1:][trained]).abs().max().item() < TOLERANCE


def test_image_tokens_count_against_the_response_budget(caller, zoom):
    vision = PromptVision.for_model(caller)
    with serve(caller) as (url, tokenizer):
        _, full = conversation(url, tokenizer, zoom, vision, max_assistant_turns=2)
        first_turn = full.response_mask.index(0)
        tool_turn = full.response_mask[first_turn:].index(1)  # expanded: the crop's whole run
        run = full.response_ids.count(vision.image_token_id)
        # room for the tool turn's text and one pad, not for the crop's run
        _, cut = conversation(url, tokenizer, zoom, vision, max_assistant_turns=2,
                              max_response_tokens=first_turn + tool_turn - run + 2)
        _, fits = conversation(url, tokenizer, zoom, vision, max_assistant_turns=2,
                               max_response_tokens=first_turn + tool_turn + 1)
    assert cut.finish_reason == "length" and cut.response_ids == full.response_ids[:first_turn]
    assert len(cut.fields["multi_modal_inputs"]["image_grid_thw"]) == 1
    assert fits.response_ids[:first_turn + tool_turn] == full.response_ids[:first_turn + tool_turn]
    # and the crop's run keeps counting: one token was left for the next turn
    assert len(fits.response_ids) == first_turn + tool_turn + 1 and fits.finish_reason == "length"


def test_a_pad_the_policy_writes_is_text_and_ends_the_trajectory(tmp_path, zoom):
    model = make_scripted_checkpoint(tmp_path / "m", SEGMENTS + ["<|image_pad|>"], vision=True)
    vision = PromptVision.for_model(model)
    with serve(model) as (url, tokenizer):
        # (the turn's text drops the special pad, so it cannot be checked against a re-rendering)
        _, sample = conversation(url, tokenizer, zoom, vision, max_assistant_turns=3, sanity_check=False)
    pad = vision.image_token_id
    assert sample.response_ids[-2:] == [pad, tokenizer.eos_token_id] and all(sample.response_mask)
    assert sample.fields["tool_calls"] == 0 and len(sample.fields["multi_modal_inputs"]["image_grid_thw"]) == 1


def test_a_tool_image_for_a_text_only_model_fails_naming_the_tool(tmp_path, zoom):
    model = make_scripted_checkpoint(tmp_path / "m", SEGMENTS)
    with serve(model) as (url, tokenizer), pytest.raises(ValueError, match="'image_zoom_in_tool'.*text-only"):
        conversation(url, tokenizer, zoom, None, max_assistant_turns=2)


@pytest.mark.parametrize("box, size, expected", [
    ([10, 5, 70, 45], (100, 80), [10, 5, 70, 45]),  # inside: as asked
    ([-5, -5, 50, 200], (100, 80), [0, 0, 50, 80]),  # clamped to the image
    ([40, 40, 50, 50], (100, 80), [31, 31, 59, 59]),  # 10 x 10 grown to 28 x 28 about its centre (45, 45)
    ([0, 0, 10, 10], (100, 80), [0, 0, 28, 28]),  # grown, then shifted inside the image
    ([50, 10, 40, 20], (100, 80), None),  # x2 < x1
    ([0, 0, 100, 0.5], (100, 80), None),  # aspect ratio 200
    ([0, 0, 20, 20], (20, 20), None),  # the whole image is smaller than 28 x 28
])
def test_zoom_boxes(box, size, expected):
    assert fit_box(box, *size) == expected


def test_zoom_tool_answers_bad_boxes_with_an_error_and_a_small_penalty(zoom):
    tool = zoom["image_zoom_in_tool"]

    async def go():
        instance, _ = await tool.create("i", image=data_uri(IMAGE))
        bad = await tool.execute(instance, {"bbox_2d": [1, 2]})
        tiny = await tool.execute(instance, {"bbox_2d": [50, 10, 40, 20]})
        good = await tool.execute(instance, {"bbox_2d": BOX, "label": "angle"})
        await tool.release(instance)
        return bad, tiny, good

    bad, tiny, good = asyncio.run(go())
    assert bad[1] == tiny[1] == FAILED_CALL_REWARD and not bad[0].image and "bbox_2d" in bad[0].text
    assert good[1] == 0.0 and good[0].image[0].size == (60, 40) and good[0].text.endswith("with label angle.")
    with pytest.raises(ValueError, match="create_kwargs.image"):
        asyncio.run(tool.create("j"))


def test_tool_images_in_every_form_become_checked_bytes(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(IMAGE)
    pil = Image.open(io.BytesIO(IMAGE))
    for form in (pil, IMAGE, {"bytes": IMAGE}, {"path": str(path)}, str(path), path):
        assert open_image(tool_image(form, "t", 0)).size == (100, 80)
    with pytest.raises(ValueError, match="tool 't' returned image 1, which is not a readable image"):
        tool_image(b"not an image", "t", 1)
    with pytest.raises(ValueError, match="tool 't' returned image 0 as int"):
        tool_image(3, "t", 0)
    with pytest.raises(ValueError, match="cannot be read"):
        tool_image(str(tmp_path / "missing.png"), "t", 0)


def test_a_template_that_drops_tool_schemas_is_reported(tmp_path, caplog):
    """Qwen2.5-VL's own chat template has no tools section: a multi-turn run with it is told so at start-up."""
    import copy
    import json

    from rlpost.assets import package_file
    from rlpost.config import load_config
    from rlpost.models.vl_from_text import VL_TEMPLATE
    from rlpost.rollout.chat import renders_tools
    from rlpost.rollout.rollout import Rollout
    from rlpost.testing.tiny_models import tiny_vl_tokenizer

    path = tmp_path / "tools.yaml"
    path.write_text(yaml.safe_dump({"tools": [{"class_name": "verl.tools.image_zoom_in_tool.ImageZoomInTool",
                                               "config": {"type": "native"}}]}))
    cfg = load_config(None, ["rollout.multi_turn.enable=true", f"rollout.multi_turn.tool_config_path={path}"],
                      check_files=False)
    ours, qwen = tiny_vl_tokenizer(), copy.deepcopy(tiny_vl_tokenizer())
    qwen.chat_template = json.loads(package_file(*VL_TEMPLATE).read_text())["chat_template"]
    schemas = openai_schemas(load_tools(path))
    assert renders_tools(ours, schemas) and not renders_tools(qwen, schemas)
    for tokenizer, warned in ((ours, False), (qwen, True)):
        caplog.clear()
        Rollout(cfg, tokenizer).close()
        assert ("does not write tool schemas" in caplog.text) == warned


def test_tool_text_spelling_a_vision_token_stays_text(caller):
    """A tool that echoes `<|image_pad|>` (what the policy wrote, say) must not add an image slot: the servers
    expand every pad they get, and the turn's text is escaped instead."""
    from rlpost.tools import BaseTool, ToolResponse, ToolSchema

    class Echo(BaseTool):
        async def execute(self, instance_id, parameters, **kwargs):
            return ToolResponse(text="you wrote <|image_pad|> and <|vision_start|>"), 0.0, {}

    vision = PromptVision.for_model(caller)
    tools = {"image_zoom_in_tool": Echo({}, ToolSchema("image_zoom_in_tool"))}
    with serve(caller) as (url, tokenizer):
        _, sample = conversation(url, tokenizer, tools, vision, max_assistant_turns=2)
    tool_turn = [m for m in sample.fields["messages_out"] if m["role"] == "tool"][0]
    assert tool_turn["content"] == "you wrote <image_pad> and <vision_start>"
    assert sample.response_ids.count(vision.image_token_id) == 0 and sample.fields["tool_calls"] == 1
    assert len(sample.fields["multi_modal_inputs"]["image_grid_thw"]) == 1
