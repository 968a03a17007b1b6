"""flmm_probe: exact word-to-patch attention of frozen multimodal LLMs, and the F-LMM grounding pipeline."""

from .backbones import Backbone, list_backbones, load_backbone
from .layout import Layout, View
from .phrases import PhraseError
from .probe import AttentionProbe
from .record import AttentionRecord

__all__ = [
    "AttentionProbe",
    "AttentionRecord",
    "Backbone",
    "Layout",
    "PhraseError",
    "View",
    "list_backbones",
    "load_backbone",
]
__version__ = "0.1.0"
