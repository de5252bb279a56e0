"""Qwen2.5-VL as a megatron-core GPTModel with mRoPE whose first pipeline stage also holds the vision tower.

Importing this module imports megatron-core; rlpost.models.megatron_config imports it only to build a VL model."""

from __future__ import annotations

from megatron.core.models.gpt import GPTModel

from rlpost.models.vision import build_vision_tower


class VisionGPTModel(GPTModel):
    """On the first stage, image features from the tower replace the embeddings of the image tokens (row-major per
    sample, images in order) before the decoder; later stages run as a plain GPTModel. position_ids are mRoPE's
    [3, b, s]. The tower is replicated over TP: every TP rank sees the same full embeddings (no sequence
    parallelism) and gets the same gradient back from the first layer's all-reduce, so its grads agree across TP."""

    def __init__(self, *args, hf_config, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_token_id = int(hf_config.image_token_id)
        if self.pre_process:
            self.visual = build_vision_tower(hf_config, self.config.params_dtype)

    def forward(self, input_ids, position_ids, attention_mask, decoder_input=None, pixel_values=None,
                image_grid_thw=None, image_mask=None, **kwargs):
        """image_mask [b, s]: the tokens that hold image features (default: every image token; a trainer passes
        it because a policy may sample the image token itself)."""
        if self.pre_process and decoder_input is None:
            decoder_input = self.embedding(input_ids=input_ids, position_ids=None)  # [s, b, h]
            if pixel_values is not None:
                mask = input_ids == self.image_token_id if image_mask is None else image_mask.bool()
                decoder_input = self._insert_images(decoder_input, mask, pixel_values, image_grid_thw)
        return super().forward(input_ids, position_ids, attention_mask, decoder_input=decoder_input, **kwargs)

    def _insert_images(self, embeddings, mask, pixel_values, image_grid_thw):
        features = self.visual(pixel_values.to(embeddings.dtype), grid_thw=image_grid_thw).pooler_output
        if int(mask.sum()) != features.shape[0]:
            raise ValueError(f"the micro-batch has {int(mask.sum())} image tokens but its images give "
                             f"{features.shape[0]} features (grids {image_grid_thw.tolist()})")
        by_sample = embeddings.transpose(0, 1).masked_scatter(mask.unsqueeze(-1), features.to(embeddings.dtype))
        return by_sample.transpose(0, 1).contiguous()
