"""F-LMM heads on top of recorded attention: the U-Net mask decoder and the SAM refiner, as one Grounder."""

from .grounder import Grounder, GrounderConfig, build_grounder, load_grounder
from .refiner import SamRefiner, TextPrompt, load_sam
from .unet import MaskDecoder, UNetConfig, resize_logits

__all__ = ["Grounder", "GrounderConfig", "MaskDecoder", "SamRefiner", "TextPrompt", "UNetConfig", "build_grounder",
           "load_grounder", "load_sam", "resize_logits"]
