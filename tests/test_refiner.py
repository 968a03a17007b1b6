"""SamRefiner against segment_anything's own SamPredictor, on a tiny random Sam built from its classes."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from flmm_probe.decoder.refiner import SamRefiner, load_sam

IMG_SIZE, PATCH, DIM = 64, 16, 32
TEXT_DIM, TEXT_LAYERS = 24, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_sam(seed: int = 0) -> Sam:
    """A random Sam with SAM's structure in small: 64-pixel input, 4x4 embedding, 16x16 mask prompts."""
    torch.manual_seed(seed)
    grid = IMG_SIZE // PATCH
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=IMG_SIZE,
            patch_size=PATCH,
            embed_dim=48,
            depth=2,
            num_heads=2,
            mlp_ratio=2,
            out_chans=DIM,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=2,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=DIM, image_embedding_size=(grid, grid), input_image_size=(IMG_SIZE, IMG_SIZE), mask_in_chans=8
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=64, num_heads=2),
            transformer_dim=DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    # Random init gives logits of ~0.02; scale the mask heads so logits are O(1) and 1e-4 is a tight check.
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(100)
    return sam.eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A non-square (48, 80, 3) uint8 RGB image: SAM's input frame is (38, 64), padded to 64x64."""
    return np.random.default_rng(0).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)


def coarse(n: int = 2) -> torch.Tensor:
    """(n, 12, 20) coarse logits over the whole image: one blob per mask, the last one empty."""
    logits = torch.full((n, 12, 20), -4.0)
    logits[0, 3:7, 5:12] = 3.0
    return logits


def predictor_logits(sam: Sam, image: np.ndarray, box: np.ndarray, mask_input: np.ndarray | None = None) -> torch.Tensor:
    """(H, W) logits of segment_anything's SamPredictor for one XYXY pixel box (and a (1, m, m) mask prompt)."""
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, _, _ = predictor.predict(box=box, mask_input=mask_input, multimask_output=False, return_logits=True)
    return torch.as_tensor(masks[0])


def test_box_prompt_is_the_box_around_the_mask_or_the_whole_image(image):
    refiner = SamRefiner(tiny_sam(), use_text=False)
    boxes = refiner.box_prompt(coarse(), image.shape[:2])
    # The blob covers cells x 5..11, y 3..6 of a 20x12 grid over an 80x48 image: 4 pixels per cell.
    assert boxes[0].tolist() == pytest.approx([20, 12, 48, 28], abs=2)
    assert boxes[1].tolist() == [0, 0, 80, 48]


def test_box_only_matches_sam_predictor(image):
    sam = tiny_sam()
    refiner = SamRefiner(sam, use_text=False, use_mask=False)
    logits = coarse()
    with torch.no_grad():
        ours = refiner(image, logits)
    assert ours.shape == (2, 48, 80)
    boxes = refiner.box_prompt(logits, image.shape[:2]).numpy()
    for i in range(2):
        torch.testing.assert_close(ours[i], predictor_logits(sam, image, boxes[i]), atol=1e-4, rtol=0)


def test_box_and_mask_prompts_match_sam_predictor(image):
    sam = tiny_sam()
    refiner = SamRefiner(sam, use_text=False)
    logits = coarse()
    embedding, input_size, original_size = refiner.embed(image)
    assert input_size == (38, 64) and original_size == (48, 80)
    masks = refiner.mask_prompt(logits, input_size)
    assert masks.shape == (2, 1, 16, 16)  # 4x the 4x4 embedding grid, as 256 is for 64x64
    with torch.no_grad():
        ours = refiner.forward_embedding(embedding, input_size, original_size, logits)
    boxes = refiner.box_prompt(logits, original_size).numpy()
    for i in range(2):
        theirs = predictor_logits(sam, image, boxes[i], masks[i].numpy())
        torch.testing.assert_close(ours[i], theirs, atol=1e-4, rtol=0)
    # The mask prompt is really used: without it the output differs.
    without = SamRefiner(sam, use_text=False, use_mask=False)
    with torch.no_grad():
        assert not torch.allclose(without.forward_embedding(embedding, input_size, original_size, logits), ours)


def test_text_tokens_change_the_output_and_train_the_right_parts(image):
    sam = tiny_sam()
    refiner = SamRefiner(sam, text_dim=TEXT_DIM, text_layers=TEXT_LAYERS)
    refiner.train()
    assert not sam.image_encoder.training
    torch.manual_seed(1)
    texts = [torch.randn(4, TEXT_LAYERS, TEXT_DIM), torch.randn(2, TEXT_LAYERS, TEXT_DIM)]
    logits = coarse().requires_grad_()
    out = refiner(image, logits, texts)
    assert out.shape == (2, 48, 80)
    with torch.no_grad():
        plain = SamRefiner(sam, use_text=False)(image, logits)
        other = refiner(image, logits, [t + 1 for t in texts])
    assert not torch.allclose(out, plain, atol=1e-3)
    assert not torch.allclose(out, other, atol=1e-3)

    out.sigmoid().mean().backward()

    def has_grad(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert refiner.text.proj.weight.grad.abs().sum() > 0
    assert refiner.text.layer_logits.grad.abs().sum() > 0
    assert has_grad(sam.prompt_encoder.mask_downscaling)
    assert sam.prompt_encoder.point_embeddings[2].weight.grad.abs().sum() > 0  # the box's first corner
    assert has_grad(sam.mask_decoder)
    assert all(not p.requires_grad and p.grad is None for p in sam.image_encoder.parameters())
    assert logits.grad.abs().sum() > 0  # the coarse mask is trained through the mask prompt too


def test_text_sizes_are_inferred_lazily(image):
    refiner = SamRefiner(tiny_sam())
    texts = [torch.randn(3, TEXT_LAYERS, TEXT_DIM)]
    out = refiner(image, coarse(1), texts)
    assert out.shape == (1, 48, 80)
    assert refiner.text.layer_logits.shape == (TEXT_LAYERS,)
    assert refiner.text.proj.weight.shape == (DIM, TEXT_DIM)


def test_text_refiner_needs_text_embeds(image):
    refiner = SamRefiner(tiny_sam(), text_dim=TEXT_DIM, text_layers=TEXT_LAYERS)
    with pytest.raises(ValueError, match="text prompts"):
        refiner(image, coarse(), None)


def test_load_sam_reads_a_checkpoint_safely(tmp_path):
    torch.manual_seed(0)
    reference = load_sam("vit_b")  # random weights
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(reference.state_dict(), path)
    for sam in (load_sam("vit_b", path), load_sam(path)):
        assert isinstance(sam, Sam) and not sam.training
        torch.testing.assert_close(sam.mask_decoder.iou_token.weight, reference.mask_decoder.iou_token.weight)
        torch.testing.assert_close(
            sam.image_encoder.patch_embed.proj.weight, reference.image_encoder.patch_embed.proj.weight
        )
    with pytest.raises(ValueError, match="Unknown SAM"):
        load_sam("vit_tiny")
