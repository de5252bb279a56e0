"""Micro-batches through megatron's pipeline schedule: forward-only collection (log-probs, entropy, values) and
forward+backward with a loss. Sequences are right-padded, so the causal mask alone keeps padding out of every
real position and no attention mask is built."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from rlpost.megatron.logits import vocab_parallel_logprobs
from rlpost.megatron.model import StageModel

MicroBatch = dict[str, torch.Tensor]


VISION_INPUTS = ("pixel_values", "image_grid_thw", "image_mask")


def position_ids(input_ids: torch.Tensor) -> torch.Tensor:
    return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)


def model_inputs(stage: StageModel, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Positions as the model wants them, and the images' inputs (Qwen2.5-VL: mRoPE positions [3, b, s], carried
    as mb['position_ids'] [b, 3, s]; a micro-batch without images has text positions in all three sections)."""
    ids = mb["input_ids"]
    if stage.dims.vision is None:
        return position_ids(ids), {}
    positions = mb["position_ids"].transpose(0, 1) if "position_ids" in mb else position_ids(ids).expand(3, -1, -1)
    return positions, {k: mb[k] for k in VISION_INPUTS if k in mb}


@dataclass
class OnOutput:
    """What the last stage does with each micro-batch's output. hidden_states=True hands `fn` the final hidden
    states [s, b, h] instead of logits, so it can run the LM head on the positions it needs only."""

    fn: Callable[[torch.Tensor, MicroBatch], Any]
    hidden_states: bool = False

    def __call__(self, output, mb):
        return self.fn(output, mb)


@contextmanager
def _hidden_states_only(core):
    core.post_process = False  # GPTModel then returns the decoder's (final-normed) output
    try:
        yield
    finally:
        core.post_process = True


def selects_positions(stage: StageModel) -> bool:
    """The LM head can run on selected positions unless hidden states are split over TP (sequence parallel)."""
    return not stage.value_head and not stage.core.config.sequence_parallel


def run_schedule(
    stage: StageModel,
    micro_batches: list[MicroBatch],
    on_output: Callable[[torch.Tensor, MicroBatch], Any],
    forward_only: bool,
) -> list[Any]:
    """Run the micro-batches through the pipeline. On the last stage, on_output(output, micro_batch) is called per
    micro-batch: forward-only, its results are returned in order; otherwise it returns (loss, metrics) and the
    loss is back-propagated. Other stages return []. An OnOutput with hidden_states=True gets hidden states."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    hidden = getattr(on_output, "hidden_states", False)

    def forward_step(data_iterator, model):
        mb = next(data_iterator)
        with _hidden_states_only(stage.core) if hidden and stage.core.post_process else nullcontext():
            positions, vision = model_inputs(stage, mb)
            out = model(mb["input_ids"], positions, attention_mask=None, **vision)
        return out, partial(_on_output, mb)

    def _on_output(mb, output, non_loss_data=False):
        return on_output(output, mb)

    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(micro_batches), model=[stage.module],
        num_microbatches=len(micro_batches), seq_length=max(mb["input_ids"].shape[1] for mb in micro_batches),
        micro_batch_size=micro_batches[0]["input_ids"].shape[0], forward_only=forward_only,
        collect_non_loss_data=forward_only,
    )


def _scaled_logprobs(stage: StageModel, logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                     with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs at the sampling temperature, computed over the TP group's vocabulary slices."""
    from megatron.core import parallel_state as ps

    if temperature != 1.0:
        logits = logits / temperature
    return vocab_parallel_logprobs(logits, targets, stage.dims.vocab, group=ps.get_tensor_model_parallel_group(),
                                   with_entropy=with_entropy)


def token_logprobs(stage: StageModel, logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(x_{t+1} | x_<=t) for t < s-1 (shape [b, s-1]) from this TP rank's vocabulary slice of the logits."""
    return _scaled_logprobs(stage, logits[:, :-1], input_ids[:, 1:], temperature, with_entropy)


def masked_token_logprobs(stage: StageModel, hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                          temperature: float = 1.0, with_entropy: bool = False):
    """Like token_logprobs, from final hidden states [s, b, h], running the LM head only where mask [b, s-1] is
    set (response tokens); other positions get 0."""
    core = stage.core
    selected = mask.bool()
    rows = hidden.transpose(0, 1)[:, :-1][selected]
    weight = core.shared_embedding_or_output_weight() if core.share_embeddings_and_output_weights else None
    logits, _ = core.output_layer(rows.unsqueeze(1), weight=weight)
    lp, ent = _scaled_logprobs(stage, logits[:, 0], input_ids[:, 1:][selected], temperature, with_entropy)
    zeros = torch.zeros(mask.shape, dtype=lp.dtype, device=lp.device)
    return zeros.masked_scatter(selected, lp), None if ent is None else zeros.masked_scatter(selected, ent)


def logprobs_fn(stage: StageModel, temperature: float, with_entropy: bool, masked: bool) -> OnOutput:
    """(output, micro-batch) -> (log_probs, entropy); masked=True runs the LM head on mb['loss_mask'] only."""
    if masked and selects_positions(stage):
        return OnOutput(lambda hidden, mb: masked_token_logprobs(stage, hidden, mb["input_ids"], mb["loss_mask"],
                                                                 temperature, with_entropy), hidden_states=True)
    return OnOutput(lambda logits, mb: token_logprobs(stage, logits, mb["input_ids"], temperature, with_entropy))


@torch.no_grad()
def compute_logprobs(stage: StageModel, micro_batches: list[MicroBatch], temperature: float = 1.0,
                     with_entropy: bool = False) -> list[dict[str, torch.Tensor]]:
    """Per micro-batch {'log_probs': [b, s-1], 'entropy': [b, s-1]?} on the last stage, [] elsewhere. With a
    'loss_mask' in every micro-batch, only those positions pay for the LM head (the rest are 0)."""
    inner = logprobs_fn(stage, temperature, with_entropy, masked=all("loss_mask" in mb for mb in micro_batches))

    def collect(output, mb):
        lp, ent = inner(output, mb)
        return {"log_probs": lp} | ({"entropy": ent} if with_entropy else {})

    stage.module.eval()
    return run_schedule(stage, micro_batches, OnOutput(collect, inner.hidden_states), forward_only=True)


@torch.no_grad()
def compute_values(stage: StageModel, micro_batches: list[MicroBatch]) -> list[dict[str, torch.Tensor]]:
    """Critic values [b, s-1] on the last stage: position t values the state that generates token t+1, aligned
    with the log-probs."""
    stage.module.eval()
    return run_schedule(stage, micro_batches, lambda out, mb: {"values": out[:, :-1, 0].float()}, forward_only=True)
