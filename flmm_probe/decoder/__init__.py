"""F-LMM heads on top of recorded attention: the U-Net mask decoder and the SAM refiner."""

from .refiner import SamRefiner, TextPrompt, load_sam
from .unet import MaskDecoder, UNetConfig, resize_logits

__all__ = ["MaskDecoder", "SamRefiner", "TextPrompt", "UNetConfig", "load_sam", "resize_logits"]
