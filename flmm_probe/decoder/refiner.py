"""The F-LMM SAM refiner: a coarse mask becomes SAM prompts, SAM returns the refined mask (docs/design.md step 5).

Built on segment_anything's own parts: `Sam.image_encoder` (frozen), `Sam.prompt_encoder` and
`Sam.mask_decoder` (trained), `ResizeLongestSide` and `Sam.postprocess_masks`, so that with text and mask
prompts off it computes exactly what `SamPredictor.predict(box=..., multimask_output=False)` does.

Frames: the ORIGINAL image is (H, W) pixels; SAM's INPUT frame is the image resized so its long side is
`img_size` (input_size = (h, w)), then zero-padded bottom/right to img_size x img_size; the MASK PROMPT
frame is that padded square resized to `prompt_encoder.mask_input_size` (4x the embedding grid, 256x256
for the official models). Boxes are XYXY pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

logger = logging.getLogger(__name__)

# Image-encoder width -> kind, to recognise an official checkpoint from its weights.
_KIND_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


# The checkpoint files segment-anything publishes, by kind.
OFFICIAL_CHECKPOINTS = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}


def load_sam(kind_or_path: str | Path, checkpoint: str | Path | None = None) -> Sam:
    """Build an official SAM ("vit_b", "vit_l", "vit_h") with segment_anything's builders and load its weights.

    load_sam("vit_l", "sam_vit_l_0b3195.pth")  # kind and checkpoint
    load_sam("sam_vit_l_0b3195.pth")           # the kind is read off the checkpoint's encoder width
    load_sam("vit_b")                          # random weights (tests, shapes only); logs a warning
    Checkpoints are read with `torch.load(weights_only=True)` (or safetensors), never unpickled freely.
    Returns the Sam in eval mode on the CPU.
    """
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"SAM checkpoint {checkpoint} does not exist: pass the path of an official checkpoint "
                                f"({', '.join(OFFICIAL_CHECKPOINTS.values())}).")
    if str(kind_or_path) in sam_model_registry:
        kind = str(kind_or_path)
        state = _read_state_dict(checkpoint) if checkpoint is not None else None
    elif Path(kind_or_path).is_file():
        state = _read_state_dict(kind_or_path)
        if "image_encoder.patch_embed.proj.weight" not in state:
            raise ValueError(f"{kind_or_path} is not a SAM checkpoint (no image_encoder.patch_embed.proj.weight): pass an "
                             f"official one ({', '.join(OFFICIAL_CHECKPOINTS.values())}) or a kind: {sorted(sam_model_registry)}.")
        width = state["image_encoder.patch_embed.proj.weight"].shape[0]
        if width not in _KIND_BY_WIDTH:
            raise ValueError(f"{kind_or_path}: image encoder width {width} is not an official SAM (768, 1024, 1280).")
        kind = _KIND_BY_WIDTH[width]
    else:
        raise ValueError(
            f"Unknown SAM {kind_or_path!r}: pass one of {sorted(sam_model_registry)} (with a checkpoint) "
            "or the path of an official checkpoint file."
        )
    # The builders' own loading is a plain torch.load, so they get no checkpoint and we load the weights.
    sam = sam_model_registry[kind]()
    if state is None:
        logger.warning("load_sam(%r) without a checkpoint: the SAM has random weights.", kind)
    else:
        sam.load_state_dict(state)
    return sam.eval()


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


class TextPrompt(LazyModuleMixin, nn.Module):
    """Phrase hidden states -> SAM prompt tokens: a softmax-weighted sum over layers, then a linear layer.

    (tokens, layers, dim) -> (tokens, out_dim). The layer weights start equal (zeros before softmax).
    `dim` / `layers` None are sized from the first input (PyTorch lazy modules): run one forward pass
    before building an optimizer.
    """

    def __init__(self, out_dim: int, dim: int | None = None, layers: int | None = None) -> None:
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(layers)) if layers is not None else UninitializedParameter()
        self.proj = nn.Linear(dim, out_dim) if dim is not None else nn.LazyLinear(out_dim)

    def initialize_parameters(self, hidden: torch.Tensor) -> None:
        if isinstance(self.layer_logits, UninitializedParameter):
            self.layer_logits.materialize((hidden.shape[-2],))
            with torch.no_grad():
                self.layer_logits.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weights = self.layer_logits.softmax(dim=0)  # (layers,)
        mixed = torch.einsum("tld,l->td", hidden.to(weights.dtype), weights)  # (tokens, dim)
        return self.proj(mixed)


class SamRefiner(nn.Module):
    """Refine coarse masks with SAM prompted by their box, their logits and the phrase's hidden states.

    sam: a segment_anything `Sam` (official or the organism's tiny one); its image encoder is frozen here.
    use_box: prompt with the box around the coarse mask (logits > 0); the whole image if it is empty.
    use_mask: prompt with the coarse logits as SAM's dense mask input.
    use_text: append the projected phrase tokens to the sparse prompt tokens; needs `text_embeds`.
    text_dim, text_layers: LMM hidden size and number of hidden-state layers per token; None sizes them
        from the first `text_embeds` seen.

    Two faces, as SamPredictor has: `forward(image, ...)` for one PIL/numpy image, and
    `forward_embedding(embedding, ...)` for training from cached `embed` outputs; both differentiable
    w.r.t. the prompt encoder, mask decoder, text prompt and the coarse logits (through the mask prompt).
    """

    def __init__(
        self,
        sam: Sam,
        use_text: bool = True,
        use_box: bool = True,
        use_mask: bool = True,
        text_dim: int | None = None,
        text_layers: int | None = None,
    ) -> None:
        super().__init__()
        self.sam = sam
        self.use_text, self.use_box, self.use_mask = use_text, use_box, use_mask
        self.sam.image_encoder.requires_grad_(False)
        self.sam.image_encoder.eval()
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.text = TextPrompt(sam.prompt_encoder.embed_dim, text_dim, text_layers) if use_text else None

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def train(self, mode: bool = True) -> SamRefiner:
        super().train(mode)
        self.sam.image_encoder.eval()  # frozen: it stays in inference mode while the rest trains
        return self

    @torch.no_grad()
    def embed(self, image: Image.Image | np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Run the frozen image encoder once; cache the result per image and reuse it in `forward_embedding`.

        image: PIL image or (H, W, 3) uint8 RGB array.
        Returns (embedding (1, C, h', w') float, input_size (h, w), original_size (H, W)), the same
        quantities that `SamPredictor.set_image` computes.
        """
        array = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"Expected a PIL image or an (H, W, 3) uint8 RGB array, got {array.dtype} {array.shape}.")
        if self.sam.image_format == "BGR":
            array = array[..., ::-1]
        resized = self.transform.apply_image(array)  # (h, w, 3) uint8, long side img_size
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None].contiguous()
        embedding = self.sam.image_encoder(self.sam.preprocess(pixels))
        return embedding, (resized.shape[0], resized.shape[1]), (array.shape[0], array.shape[1])

    def forward(
        self,
        image: Image.Image | np.ndarray,
        coarse_logits: torch.Tensor,
        text_embeds: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """image: PIL or (H, W, 3) uint8 RGB; coarse_logits: (n, y, x) covering the whole image, any resolution;
        text_embeds: n tensors (tokens, layers, dim), or None when use_text is off.
        Returns (n, H, W) refined mask logits at the original image size.
        """
        return self.forward_embedding(*self.embed(image), coarse_logits, text_embeds)

    def forward_embedding(
        self,
        embedding: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        coarse_logits: torch.Tensor,
        text_embeds: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The tensor face: one image's cached `embed` output and n coarse masks (n phrases).

        embedding: (1, C, h', w') or (C, h', w'); input_size (h, w), original_size (H, W) as `embed` returns.
        coarse_logits: (n, y, x) logits covering the whole original image, any resolution.
        text_embeds: n tensors (tokens_i, layers, dim), or None when use_text is off.
        Returns (n, H, W) mask logits at the original image size.
        """
        n = coarse_logits.shape[0]
        if self.use_text and (text_embeds is None or len(text_embeds) != n):
            got = "None" if text_embeds is None else len(text_embeds)
            raise ValueError(
                f"This refiner uses text prompts: pass one (tokens, layers, dim) tensor per mask ({n}), got {got}."
            )
        embedding = embedding.reshape(1, *embedding.shape[-3:]).to(self.device)
        coarse_logits = coarse_logits.to(self.device).float()
        boxes = self.transform.apply_boxes_torch(self.box_prompt(coarse_logits, original_size), original_size)
        masks = self.mask_prompt(coarse_logits, input_size)
        image_pe = self.sam.prompt_encoder.get_dense_pe()

        refined = []
        # One mask at a time: phrases have different token counts and SAM's decoder cannot mask padding.
        for i in range(n):
            sparse, dense = self.sam.prompt_encoder(
                points=None,
                boxes=boxes[i : i + 1] if self.use_box else None,
                masks=masks[i : i + 1] if self.use_mask else None,
            )  # sparse (1, 0 or 2, C), dense (1, C, h', w')
            if self.text is not None:
                tokens = self.text(text_embeds[i].to(self.device))  # (tokens, C)
                sparse = torch.cat([sparse, tokens[None].to(sparse.dtype)], dim=1)
            low_res, _ = self.sam.mask_decoder(
                image_embeddings=embedding,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )  # (1, 1, mask_h, mask_w) in the mask prompt frame
            refined.append(self.sam.postprocess_masks(low_res, input_size, original_size)[0, 0])
        return torch.stack(refined) if refined else coarse_logits.new_zeros(0, *original_size)

    @torch.no_grad()
    def box_prompt(self, coarse_logits: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """(n, y, x) coarse logits -> (n, 4) XYXY boxes in ORIGINAL image pixels around logits > 0.

        The logits are resized bilinearly to the image first; x1, y1 are exclusive edges (a one-pixel mask
        has a one-pixel box). An empty mask gives the whole image (0, 0, W, H).
        """
        height, width = original_size
        resized = F.interpolate(coarse_logits[:, None].float(), size=original_size, mode="bilinear", align_corners=False)
        fg = resized[:, 0] > 0  # (n, H, W)
        boxes = torch.tensor([[0.0, 0.0, width, height]], device=coarse_logits.device).repeat(len(fg), 1)
        for i, mask in enumerate(fg):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if len(xs):
                boxes[i] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        return boxes

    def mask_prompt(self, coarse_logits: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """(n, y, x) coarse logits over the whole image -> (n, 1, *mask_input_size) SAM mask prompts.

        Resized to the input frame (h, w), padded to img_size x img_size, resized to the mask prompt frame:
        the frame of the low-res logits SAM itself returns. The padding lies outside the image, so it gets
        a confident background logit (the smaller of -1 and the lowest coarse logit).
        """
        size = self.sam.image_encoder.img_size
        logits = coarse_logits[:, None].float()
        pad_value = min(-1.0, logits.min().item()) if logits.numel() else -1.0
        logits = F.interpolate(logits, size=input_size, mode="bilinear", align_corners=False)
        logits = F.pad(logits, (0, size - input_size[1], 0, size - input_size[0]), value=pad_value)
        return F.interpolate(logits, size=self.sam.prompt_encoder.mask_input_size, mode="bilinear", align_corners=False)
