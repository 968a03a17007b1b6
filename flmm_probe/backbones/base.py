"""The Backbone: one frozen HF model + its processor -> AttentionRecords.

A family adapter subclasses `Backbone`, registers itself for its `config.model_type`s and implements
`layout`: which sequence positions are image tokens and how they tile the image. Prompting, phrase
lookup, the probe and pooling are shared here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import BatchFeature, PreTrainedModel, ProcessorMixin

from ..images import ImageLike, to_rgb
from ..layout import GLOBAL, Layout
from ..phrases import PhraseLike, Span, pool, resolve_spans, span_tokens
from ..probe import AttentionProbe
from ..record import AttentionRecord

# docs/design.md step 1: the text to ground is the assistant's answer to this instruction.
DEFAULT_INSTRUCTION = "Please give me a description of the image."


_REGISTRY: dict[str, type[Backbone]] = {}


class UnsupportedModelError(ValueError):
    """No adapter is registered for the model's config.model_type."""


def register_backbone(*model_types: str) -> Callable[[type[Backbone]], type[Backbone]]:
    """Class decorator: make an adapter the one `load_backbone` uses for these `config.model_type`s."""

    def decorator(cls: type[Backbone]) -> type[Backbone]:
        for model_type in model_types:
            if model_type in _REGISTRY:
                raise ValueError(f"model_type {model_type!r} already has the adapter {_REGISTRY[model_type].__name__}.")
            _REGISTRY[model_type] = cls
        return cls

    return decorator


def list_backbones() -> list[str]:
    """The supported `config.model_type`s."""
    return sorted(_REGISTRY)


def adapter_for(model_type: str) -> type[Backbone]:
    """The adapter class registered for `model_type`."""
    if model_type not in _REGISTRY:
        raise UnsupportedModelError(
            f"No backbone adapter for model_type {model_type!r}. Supported: {', '.join(list_backbones())}. "
            "To add one, write flmm_probe/backbones/<family>.py with a Backbone subclass decorated with "
            f"@register_backbone({model_type!r}) that implements layout(), import it in "
            "flmm_probe/backbones/__init__.py, and test it against eager attention like tests/test_backbone_llava.py."
        )
    return _REGISTRY[model_type]


def load_image(image: ImageLike) -> Image.Image:
    """An 8-bit RGB PIL image from a path, a PIL image of any mode or an array (``flmm_probe.images.to_rgb``)."""
    return to_rgb(image)


@dataclass
class Prepared:
    """A processed batch: model inputs, per sample its layout, phrase spans and phrase token indices."""

    inputs: BatchFeature
    layouts: list[Layout]
    spans: list[list[Span]]
    tokens: list[list[torch.Tensor]]  # per sample, per phrase: (n_tokens,) sequence positions


class Backbone:
    """A frozen HF multimodal model and its processor, ready to record word-to-patch attention.

    Subclasses implement `layout`. The text is appended to the chat template's generation prompt for
    `instruction` (the user turn holds the image), so it is read as the assistant's answer.
    """

    # What the processor appends after the text, if anything (it is not part of any phrase).
    text_suffix: str = ""
    # The family's view kinds in the fit's stacked channel order (AttentionRecord.stacked): fixed per family,
    # whatever views an image gets, so that a one-tile image stacks to the channels of a tiled one (zeros
    # where its "tiles" would be). Each record carries it in meta["view_kinds"].
    view_kinds: tuple[str, ...] = (GLOBAL,)

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, instruction: str = DEFAULT_INSTRUCTION):
        # Frozen means frozen: no gradient can reach the model's weights through a backbone.
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.instruction = instruction

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    # ---- family-specific -------------------------------------------------------------------------

    def layout(self, inputs: BatchFeature, index: int, image_size: tuple[int, int]) -> Layout:
        """The image-token layout of sample `index` of a processed batch (original image (height, width))."""
        raise NotImplementedError

    def prompt(self) -> str:
        """The prompt that precedes the text: user turn with the image and the instruction."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.instruction}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def answer_prompt(self) -> str:
        """The prompt the text is appended to: ``prompt()``, plus a space where it ends without whitespace.

        A generation prompt such as LLaVA-1.5's "ASSISTANT:" ends without a space, and the model writes its
        answer's first word with the space in front ("▁A" in SentencePiece vocabularies); joined
        without one ("ASSISTANT:A boy") the first word would become another token than the model writes.
        """
        prompt = self.prompt()
        return prompt if not prompt or prompt[-1].isspace() else prompt + " "

    def model_inputs(self, inputs: BatchFeature) -> dict[str, Any]:
        """The keyword arguments of the model's forward, from the processor's output."""
        return {k: v for k, v in inputs.items() if k != "offset_mapping"}

    def text_start(self, inputs: BatchFeature, index: int, text: str) -> int:
        """Index of the text's first character in the processed prompt of sample `index`.

        The text ends the prompt (plus `text_suffix`), so it is found from the last token's end offset.
        """
        return int(inputs["offset_mapping"][index, :, 1].max()) - len(self.text_suffix) - len(text)

    # ---- shared ----------------------------------------------------------------------------------

    def prepare(self, images: Sequence[ImageLike], texts: Sequence[str], phrases: Sequence[Sequence[PhraseLike]]) -> Prepared:
        """Process a batch and locate image tokens and phrase tokens."""
        pil = [load_image(image) for image in images]
        texts = [self._check_text(text) for text in texts]
        spans = [resolve_spans(text, p) for text, p in zip(texts, phrases)]
        prompt = self.answer_prompt()
        # One image per sample, nested: some processors (Gemma 3) read a flat list as one sample's images.
        inputs = self.processor(
            images=[[image] for image in pil],
            text=[prompt + text for text in texts],
            padding=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        limit = _max_positions(self.model.config)
        if limit is not None and inputs["input_ids"].shape[1] > limit:
            raise ValueError(f"A prompt of this batch is {inputs['input_ids'].shape[1]} tokens (image tokens included), more "
                             f"than the model's {limit} positions: shorten the text or give a smaller image.")
        layouts, tokens = [], []
        for i, (image, text) in enumerate(zip(pil, texts)):
            layouts.append(self.layout(inputs, i, (image.height, image.width)))
            tokens.append(span_tokens(inputs["offset_mapping"][i], self.text_start(inputs, i, text), spans[i], text))
        return Prepared(inputs, layouts, spans, tokens)

    @torch.no_grad()
    def record_batch(
        self,
        samples: Iterable[tuple[ImageLike, str, Sequence[PhraseLike]]],
        batch_size: int = 1,
        pooling: str = "mean",
        hidden_states: bool = True,
        progress: bool = False,
    ) -> list[AttentionRecord]:
        """Record many (image, text, phrases) samples, `batch_size` at a time (padded batches)."""
        samples = list(samples)
        records: list[AttentionRecord] = []
        for first in tqdm(range(0, len(samples), batch_size), disable=not progress, desc="record", unit="batch"):
            chunk = samples[first : first + batch_size]
            images, texts, phrases = zip(*chunk)
            records.extend(self._record_prepared(self.prepare(images, texts, phrases), texts, phrases, pooling, hidden_states))
        return records

    def record(
        self, image: ImageLike, text: str, phrases: Sequence[PhraseLike], pooling: str = "mean", hidden_states: bool = True
    ) -> AttentionRecord:
        """Record one image and one text; `phrases` are strings or (start, end) char spans of `text`."""
        return self.record_batch([(image, text, phrases)], pooling=pooling, hidden_states=hidden_states)[0]

    def _record_prepared(
        self, prep: Prepared, texts: Sequence[str], phrases: Sequence[Sequence[PhraseLike]], pooling: str, hidden_states: bool
    ) -> list[AttentionRecord]:
        queries = [torch.cat(t).unique() for t in prep.tokens]  # sorted, per sample
        keys = [layout.key_positions for layout in prep.layouts]
        with AttentionProbe(self.model, pad_rows(queries), pad_rows(keys)) as probe:
            inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.model_inputs(prep.inputs).items()}
            outputs = self.model(**inputs, use_cache=False, output_hidden_states=hidden_states)
        records = []
        for i, layout in enumerate(prep.layouts):
            weights = probe.weights[i, :, :, : len(queries[i]), : len(keys[i])]  # (layer, head, query, key)
            groups = [torch.searchsorted(queries[i], t) for t in prep.tokens[i]]
            merged = pool(weights, groups, pooling)  # (phrase, layer, head, key)
            maps = {kind: m.cpu() for kind, m in layout.to_image(merged).items()}
            norms = layout.to_image(probe.key_norms[i, :, :, : len(keys[i])])  # {kind: (layer, kv_head, y, x)}
            hidden = []
            if hidden_states:
                layers = torch.stack(outputs.hidden_states[1:], dim=2)[i]  # (T, layer, dim)
                hidden = [layers[t.to(layers.device)].cpu() for t in prep.tokens[i]]
            records.append(
                AttentionRecord(
                    text=texts[i],
                    phrases=[texts[i][s:e] for s, e in prep.spans[i]],
                    spans=prep.spans[i],
                    maps=maps,
                    image_size=layout.image_size,
                    hidden=hidden,
                    image_mass=merged.sum(-1).cpu(),
                    key_norms={kind: n.cpu() for kind, n in norms.items()},
                    meta={
                        "model": getattr(self.model.config, "_name_or_path", ""),
                        "model_type": self.model.config.model_type,
                        "pooling": pooling,
                        "instruction": self.instruction,
                        "view_kinds": list(self.view_kinds),
                    },
                )
            )
        return records


    def _check_text(self, text: str) -> str:
        """``text`` if the backbone can read it as the answer; a ValueError that says what to change otherwise."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"The text must be a non-empty string, not {text!r}.")
        if text != text.rstrip():
            raise ValueError("The text must not end with whitespace (its position is found from its end); strip it.")
        markers = [getattr(self.processor, name, None) for name in ("image_token", "boi_token", "video_token")]
        typed = [m for m in markers if isinstance(m, str) and m and m in text]
        if typed:
            raise ValueError(f"The text contains the image placeholder {typed[0]!r}, which the processor would expand into "
                             "image tokens: the image is passed separately; remove it from the text.")
        return text


def _max_positions(config) -> int | None:
    """The language model's number of positions, where its config says it."""
    text = getattr(config, "text_config", None) or getattr(config, "llm_config", None) or config
    return getattr(text, "max_position_embeddings", None)


def pad_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack ragged 1-D LongTensors into (batch, n), padding by repeating each row's first entry."""
    width = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r[:1].expand(width - len(r))]) for r in rows])


def image_positions(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """(n,) sequence positions of `token_id` in one row of input_ids."""
    return torch.nonzero(input_ids == token_id).flatten()
