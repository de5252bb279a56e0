"""The embedded engine serving Qwen2.5-VL against transformers: prompt and sampled log-probs on image prompts
(fp32, < 1e-4) and greedy tokens, with positions from transformers' own get_rope_index; prefix reuse and GRPO's
prefill-once keyed on image content; and SGLang's `image_data` / OpenAI image parts over real HTTP."""

import base64
import io

import pytest
import requests
import torch
from PIL import Image

from rlpost.net import free_port
from rlpost.rollout.engine.engine import Engine
from rlpost.rollout.engine.request import Request, RequestError, SamplingParams
from rlpost.rollout.launcher import ServerProcess, ServerSpec
from rlpost.testing.tiny_models import make_tiny_vl_checkpoint

TOLERANCE = 1e-4
STEPS = 6


def data_uri(width, height, seed) -> str:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_vl_checkpoint(tmp_path_factory.mktemp("engine_vlm") / "m", seed=8, initializer_range=0.2)


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, dtype="float32", max_running=8, prefix_cache_tokens=4096)


@pytest.fixture(scope="module")
def hf(model):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(model, dtype=torch.float32).eval()


def prompt_ids(engine, n_images, text="Find x in the figure."):
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)
    return engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]


def request(engine, ids, images, rid, prompt_logprobs=True):
    """Greedy, with output log-probs; prompt log-probs (which are recomputed, never read from the prefix cache)
    unless told otherwise."""
    params = SamplingParams(max_new_tokens=STEPS, temperature=0.0, ignore_eos=True)
    req = Request(rid=rid, params=params, return_logprob=True, logprob_start_len=0 if prompt_logprobs else -1,
                  **engine.prepare_images(ids, images))
    engine.check(req)
    return req


def hf_logprobs(hf, ids, images):
    """log p(token_t | tokens_<t) for t >= 1 over the whole sequence, with transformers' positions."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from rlpost.rollout.engine.images import decode_image

    input_ids = torch.tensor([ids])
    kwargs = {}
    if images:
        processor = Qwen2VLImageProcessorPil.from_pretrained(hf.name_or_path)
        vision = processor(images=[decode_image(i) for i in images], return_tensors="pt")
        types = (input_ids == hf.config.image_token_id).int()
        positions, _ = hf.model.get_rope_index(input_ids, types, image_grid_thw=vision["image_grid_thw"])
        kwargs = dict(pixel_values=vision["pixel_values"], image_grid_thw=vision["image_grid_thw"],
                      position_ids=positions)
    with torch.no_grad():
        logits = hf(input_ids=input_ids, **kwargs).logits[0, :-1]
    return torch.log_softmax(logits, -1).gather(-1, input_ids[0, 1:, None])[:, 0]


@pytest.mark.parametrize("sizes", [[(84, 56)], [(84, 56), (56, 112)], []], ids=["one image", "two images", "text"])
def test_logprobs_and_greedy_tokens_equal_transformers(engine, hf, sizes):
    images = [data_uri(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    req = request(engine, prompt_ids(engine, len(images)), images, f"lp-{len(images)}")
    engine.run([req])
    assert req.finish_reason["type"] == "length" and len(req.output_ids) == STEPS
    full = req.input_ids + req.output_ids
    expected = hf_logprobs(hf, full, images)
    n = len(req.input_ids)
    got_input = torch.tensor(req.input_logprobs[1:])
    assert (got_input - expected[:n - 1]).abs().max().item() < TOLERANCE
    assert (torch.tensor(req.output_logprobs) - expected[n - 1:]).abs().max().item() < TOLERANCE


def test_greedy_tokens_are_transformers_argmax(engine, hf):
    images = [data_uri(84, 56, seed=3)]
    req = request(engine, prompt_ids(engine, 1), images, "greedy")
    engine.run([req])
    full = req.input_ids + req.output_ids
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from rlpost.rollout.engine.images import decode_image

    processor = Qwen2VLImageProcessorPil.from_pretrained(hf.name_or_path)
    vision = processor(images=[decode_image(i) for i in images], return_tensors="pt")
    ids = torch.tensor([full])
    positions, _ = hf.model.get_rope_index(ids, (ids == hf.config.image_token_id).int(),
                                           image_grid_thw=vision["image_grid_thw"])
    with torch.no_grad():
        logits = hf(input_ids=ids, pixel_values=vision["pixel_values"], image_grid_thw=vision["image_grid_thw"],
                    position_ids=positions).logits[0]
    n = len(req.input_ids)
    assert logits[n - 1:-1].argmax(-1).tolist() == req.output_ids


def test_same_text_different_images_never_share_keys_and_values(engine, hf):
    ids = prompt_ids(engine, 1, "Describe the figure in a few words, please, and then find x.")
    first, second = data_uri(84, 56, seed=10), data_uri(84, 56, seed=11)
    a = request(engine, ids, [first], "img-a", prompt_logprobs=False)
    engine.run([a])
    b = request(engine, ids, [second], "img-b", prompt_logprobs=False)
    again = request(engine, ids, [first], "img-a-again", prompt_logprobs=False)
    engine.run([b])
    engine.run([again])
    image_start = b.image_spans()[0][0]
    assert b.cached_tokens <= image_start  # at most the text before the image is reused
    assert again.cached_tokens > image_start + b.images[0].tokens  # the same image's keys/values are reused
    expected = hf_logprobs(hf, b.input_ids + b.output_ids, [second])
    assert (torch.tensor(b.output_logprobs) - expected[len(b.input_ids) - 1:]).abs().max().item() < TOLERANCE
    assert again.output_ids == a.output_ids


def test_grpo_samples_of_an_image_prompt_prefill_once(engine):
    images = [data_uri(56, 112, seed=20)]
    params = SamplingParams(max_new_tokens=4, temperature=1.0)
    fields = engine.prepare_images(prompt_ids(engine, 1, "A fresh prompt for n samples."), images)
    group = [Request(rid=f"g-{j}", params=params, **fields) for j in range(4)]
    other = Request(rid="g-other", params=params, **engine.prepare_images(
        prompt_ids(engine, 1, "A fresh prompt for n samples."), [data_uri(56, 112, seed=21)]))
    before = engine.stats["prefill_tokens"]
    engine.run(group + [other])
    n = len(fields["input_ids"])
    assert engine.stats["prefill_tokens"] - before == 2 * n  # one prefill for the group, one for the other image
    assert sorted(r.cached_tokens for r in group) == [0, n, n, n] and other.cached_tokens == 0


def test_bad_image_requests_are_refused(engine):
    ids = prompt_ids(engine, 1)
    with pytest.raises(RequestError, match=r"1 image token\(s\) for 2 image\(s\)"):
        engine.prepare_images(ids, [data_uri(56, 56, 1), data_uri(56, 56, 2)])
    with pytest.raises(RequestError, match="not a readable image"):
        engine.prepare_images(ids, ["bm90IGFuIGltYWdl"])
    with pytest.raises(RequestError, match="URLs are not fetched"):
        engine.prepare_images(ids, ["https://example.com/a.png"])
    with pytest.raises(RequestError, match=r"the prompt has 1 image token\(s\) but 0 image\(s\)"):
        engine.check(Request(rid="x", input_ids=ids, params=SamplingParams()))


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    spec = ServerSpec(str(model), port=free_port(), dtype="float32", max_running_requests=8)
    with ServerProcess(spec, tmp_path_factory.mktemp("vlm_logs") / "server.log") as process:
        process.wait_healthy(timeout_s=120)
        yield process


def test_image_data_and_image_parts_over_http(server, engine):
    ids = prompt_ids(engine, 1)
    image = data_uri(84, 56, seed=30)
    greedy = {"max_new_tokens": STEPS, "temperature": 0.0, "ignore_eos": True}
    out = requests.post(f"{server.spec.url}/generate", json={"input_ids": ids, "image_data": [image],
                                                             "sampling_params": greedy}, timeout=60).json()
    local = request(engine, ids, [image], "http-ref")
    engine.run([local])
    assert out["output_ids"] == local.output_ids
    assert out["meta_info"]["prompt_tokens"] == len(local.input_ids) > len(ids)  # the pad became the image's run
    batch = requests.post(f"{server.spec.url}/generate", json={
        "input_ids": [ids, prompt_ids(engine, 0)], "image_data": [[image], None], "sampling_params": greedy},
        timeout=60).json()
    assert batch[0]["output_ids"] == local.output_ids
    chat = requests.post(f"{server.spec.url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                  {"type": "text", "text": "Find x in the figure."}]}],
        "max_tokens": STEPS, "temperature": 0.0}, timeout=60).json()
    assert chat["usage"]["prompt_tokens"] == len(local.input_ids)
    refused = requests.post(f"{server.spec.url}/generate", json={"input_ids": ids, "image_data": ["%%%"],
                                                                 "sampling_params": greedy}, timeout=60)
    assert refused.status_code == 400 and "not a readable image" in refused.text
