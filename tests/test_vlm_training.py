"""The actor on a vision-language Batch: per-sample images travel with the samples into micro-batches (fixed size and
token budget), log-probs equal transformers' on the response tokens, and a PPO step trains the vision tower or,
with actor.freeze_vision_tower, leaves it bitwise unchanged while the language model moves."""

import pytest
import torch

from rlpost.batch import Batch
from rlpost.testing.distributed import run_ranks
from rlpost.testing.tiny_models import make_tiny_vl_checkpoint

TOLERANCE = 1e-4
IMAGE_SIZES = [(84, 56), (56, 112), (112, 56)]


def vl_batch(path):
    """Four samples: two images; text only; one image; one image again (a different one). Prompt then response."""
    from PIL import Image
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer, config = AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path)
    processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    gen = torch.Generator().manual_seed(9)

    def image(size):
        w, h = size
        return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy())

    samples = [([IMAGE_SIZES[0], IMAGE_SIZES[1]], "Compare the two.", "The first is wider."),
               ([], "What is 2 + 2?", "4"), ([IMAGE_SIZES[2]], "Find x.", "x = 70"), ([IMAGE_SIZES[0]], "Why?",
                                                                                       "Because.")]
    rows, prompt_lengths, mm = [], [], []
    for sizes, question, answer in samples:
        content = [{"type": "image"} for _ in sizes] + [{"type": "text", "text": question}]
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=False)
        inputs = processor(images=[image(s) for s in sizes], return_tensors="pt") if sizes else {}
        grids = inputs["image_grid_thw"].tolist() if sizes else []
        for g in grids:  # one <|image_pad|> per image -> one per merged patch, as the processor's expansion does
            prompt = prompt.replace("<|image_pad|>", "<|placeholder|>" * (g[0] * g[1] * g[2] // 4), 1)
        prompt = prompt.replace("<|placeholder|>", "<|image_pad|>")
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append(ids + response)
        prompt_lengths.append(len(ids))
        mm.append(dict(inputs))
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    loss_mask = torch.zeros(len(rows), width - 1)
    for i, (p, n) in enumerate(zip(prompt_lengths, lengths.tolist())):
        loss_mask[i, p - 1:n - 1] = 1.0
    assert config.image_token_id in input_ids
    return Batch(tensors={"input_ids": input_ids, "lengths": lengths, "loss_mask": loss_mask},
                 fields={"multi_modal_inputs": mm})


def hf_logprobs(path, batch):
    """Per sample, unpadded, positions from transformers' own rope index."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    out = torch.zeros(batch["loss_mask"].shape)
    for i, n in enumerate(batch["lengths"].tolist()):
        ids = batch["input_ids"][i:i + 1, :n]
        mm = batch["multi_modal_inputs"][i]
        kwargs = {}
        if mm:
            types = (ids == model.config.image_token_id).int()
            positions, _ = model.model.get_rope_index(ids, types, image_grid_thw=mm["image_grid_thw"])
            kwargs = dict(pixel_values=mm["pixel_values"], image_grid_thw=mm["image_grid_thw"], position_ids=positions)
        with torch.no_grad():
            logits = model(input_ids=ids, **kwargs).logits[0, :-1]
        out[i, :n - 1] = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    return out


def _rank(rank, world, path, batch):
    from rlpost.config import load_config
    from rlpost.config.derived import policy_loss_settings
    from rlpost.megatron.parallel import setup_model_parallel
    from rlpost.workers.roles import PolicyRole

    out = {}
    for freeze in (False, True):
        cfg = load_config(None, [f"actor.freeze_vision_tower={str(freeze).lower()}", "actor.optim.lr=1e-2",
                                 "actor.tp=2", "cluster.n_gpus_per_node=2"], check_files=False)
        setup_model_parallel(2, 1, seed=3)
        role = PolicyRole(cfg.actor, path, total_steps=2, temperature=1.0, loss=policy_loss_settings(cfg))
        before = {k: v.clone() for k, v in role.named_parameters().items()}
        fixed = role.log_probs(batch, micro_batch_size=3, max_tokens=None)
        budget = role.log_probs(batch, micro_batch_size=1, max_tokens=2 * int(batch["lengths"].max()))
        train = Batch(tensors={**batch.tensors, "advantages": torch.linspace(-1, 1, 4)[:, None].expand_as(
            batch["loss_mask"]).contiguous(), "rollout_log_probs": fixed["log_probs"]}, fields=batch.fields)
        metrics = role.update(train, n_mini_batches=1)
        after = role.named_parameters()
        out[freeze] = {"fixed": fixed["log_probs"], "budget": budget["log_probs"], "metrics": metrics,
                       "changed": sorted(k for k in before if not torch.equal(before[k], after[k]))}
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = str(make_tiny_vl_checkpoint(tmp_path_factory.mktemp("vlm_train") / "m", seed=6, initializer_range=0.2))
    batch = vl_batch(path)
    return batch, hf_logprobs(path, batch), run_ranks(_rank, 2, path, batch)


def test_logprobs_equal_transformers_with_fixed_and_budget_micro_batches(setup):
    batch, expected, results = setup
    mask = batch["loss_mask"].bool()
    for r in results:
        for key in ("fixed", "budget"):
            assert (r[False][key] - expected)[mask].abs().max().item() < TOLERANCE, key


def test_a_ppo_step_trains_the_vision_tower_unless_frozen(setup):
    _, _, results = setup
    for r in results:
        trained, frozen = r[False]["changed"], r[True]["changed"]
        assert any(k.startswith("visual.") for k in trained)
        assert any(k.startswith("decoder.") for k in trained)
        assert not any(k.startswith("visual.") for k in frozen)
        assert any(k.startswith("decoder.") for k in frozen) and "embedding.word_embeddings.weight" in frozen
