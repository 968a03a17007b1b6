"""PaliGemma and PaliGemma 2 (`paligemma`): the image tokens first, then `<bos>`, the prefix, "\\n".

The processor builds "<image>" * image_seq_length + "<bos>" + prompt + "\\n" and the SigLIP image
processor resizes the image to a fixed square (aspect not kept, no crop, no pad), so the image tokens
form a (side x side) grid over the whole image, row-major. PaliGemma has no chat template: the prefix is
the instruction followed by "\\n" (its prefix/answer separator), and the text follows as the answer.

`token_type_ids` say which tokens are prefix (0: attended bidirectionally) and which are the answer
(1: causal). The processor marks everything as prefix; the adapter marks the text as the answer, as
PaliGemma was trained, so a word does not see the words after it.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import BatchFeature

from ..layout import Layout, View
from .base import Backbone, image_positions, register_backbone


@register_backbone("paligemma")
class PaliGemmaBackbone(Backbone):
    """PaliGemma (Gemma, SDPA) and PaliGemma 2 (Gemma2 with softcapping: transformers runs it eager)."""

    def layout(self, inputs: BatchFeature, index: int, image_size: tuple[int, int]) -> Layout:
        tokens = self.processor.image_seq_length
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"image_seq_length={tokens} is not a square grid.")
        positions = image_positions(inputs["input_ids"][index], self.image_token_id)
        height, width = image_size
        return Layout((View(positions, (side, side), (0.0, 0.0, float(width), float(height))),), image_size)

    def prompt(self) -> str:
        # Starting with the image token makes the processor insert <bos> after it instead of guessing.
        return f"{self.processor.image_token}{self.instruction}\n"

    def _answer_start(self) -> int:
        """Character index where the text starts in every processed prompt (the image token expanded)."""
        image_chars = len(self.processor.image_token) * self.processor.image_seq_length
        prefix = self.prompt().removeprefix(self.processor.image_token)
        return image_chars + len(self.processor.tokenizer.bos_token) + len(prefix)

    def text_start(self, inputs: BatchFeature, index: int, text: str) -> int:
        # Counted from the start: the processor's trailing "\n" may or may not be a token.
        return self._answer_start()

    def model_inputs(self, inputs: BatchFeature) -> dict[str, Any]:
        """Inputs with token_type_ids 1 on the text (the answer) and without the processor's `labels`."""
        kwargs = {k: v for k, v in super().model_inputs(inputs).items() if k != "labels"}
        starts = inputs["offset_mapping"][..., 0]  # (batch, T) character starts; 0 on padding
        kwargs["token_type_ids"] = (starts >= self._answer_start()).long()
        return kwargs
