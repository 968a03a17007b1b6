"""Every dataset as `GroundingSample`s, opened from one spec string.

    open_dataset("shapes:test:200")            # shapes world, 200 scenes of the test split, RES task
    open_dataset("shapes:train:2000:mix")      # RES + PNG-style narratives (the paper's training mixture)
    open_dataset("shapes:redrawn:100:caption") # the same words over scenes drawn by other code (data.redrawn)
    open_dataset("shapes:decoy:100:caption")   # a target among decoys that share its colour or its size
    open_dataset("refcoco:/data/refer:val")    # refcoco / refcoco+ / refcocog (umd), select_first texts
    open_dataset("refcocog:/data/refer:train:concat")
    open_dataset("png:/data/png:val")          # Panoptic Narrative Grounding
    open_dataset("png:/data/png:train,refcoco:/data/refer:train")   # a mixture: specs joined by ","

Shapes tasks: "res" (one sample per referring expression), "png" (the narrative and its noun phrases),
"caption" (the caption and one phrase per object), "mix" (res + png).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from .png import PNGDataset
from .refcoco import RefCOCO
from .samples import GroundingDataset, GroundingSample, SamplePhrase
from .redrawn import SCENE_SPLITS, shapes_scene
from .shapes import Scene

SHAPES_TASKS = ("res", "png", "caption", "mix")


@lru_cache(maxsize=256)
def _scene(split: str, index: int, seed: int) -> Scene:
    return shapes_scene(split, index, seed)


class ShapesGrounding(GroundingDataset):
    """Shapes-world scenes `start .. start + length - 1` of `split` as grounding samples for `task`."""

    name = "shapes"

    def __init__(self, split: str, length: int, task: str = "res", seed: int = 0, start: int = 0) -> None:
        super().__init__()
        if split not in SCENE_SPLITS:
            raise ValueError(f"Unknown shapes split {split!r}; choose one of {SCENE_SPLITS}.")
        if task not in SHAPES_TASKS:
            raise ValueError(f"Unknown shapes task {task!r}; choose one of {SHAPES_TASKS}.")
        self.split, self.task, self.seed = split, task, seed
        tasks = ("res", "png") if task == "mix" else (task,)
        for index in range(start, start + length):
            scene = _scene(split, index, seed)
            if "res" in tasks:
                self._entries += [(index, "res", k) for k in range(len(scene.expressions))]
            if "png" in tasks:
                self._entries.append((index, "png", 0))
            if "caption" in tasks:
                self._entries.append((index, "caption", 0))

    def _build(self, entry: tuple[int, str, int]) -> GroundingSample:
        index, task, k = entry
        split, seed = self.split, self.seed
        scene = _scene(split, index, seed)
        attributes = {"dataset": "shapes", "split": split, "index": index, "task": task, "objects": len(scene.objects)}
        if task == "res":
            expression = scene.expressions[k]
            text = expression.text
            phrases = [SamplePhrase(text, 0, len(text), plural=False, is_thing=True, attributes={"kind": expression.kind})]
            masks = expression.mask[None]
        else:
            text = scene.narrative if task == "png" else scene.caption
            source = scene.narrative_phrases if task == "png" else scene.caption_phrases
            phrases = [SamplePhrase(p.text, p.start, p.end, plural=p.plural, is_thing=p.is_thing) for p in source]
            masks = np.stack([p.mask for p in source])
        return GroundingSample(
            sample_id=f"shapes/{split}/{index}/{task}/{k}",
            image_path=None,
            image_size=scene.image.shape[:2],
            text=text.rstrip(),
            phrases=phrases,
            attributes=attributes,
            load_masks=lambda: masks,  # the scene is in memory: masks and image cost nothing to keep
            load_image=lambda: Image.fromarray(scene.image),
        )


class Mixture(GroundingDataset):
    """Several datasets as one, in order (the paper trains on PNG + RefCOCO + RefCOCO+ + RefCOCOg)."""

    name = "mixture"

    def __init__(self, parts: list[GroundingDataset]) -> None:
        super().__init__()
        self.parts = parts
        self._entries = [(i, entry) for i, part in enumerate(parts) for entry in part._entries]
        self._index_bad = [bad for part in parts for bad in part._index_bad]

    def _build(self, entry: tuple[int, object]) -> GroundingSample:
        part, inner = entry
        return self.parts[part]._build(inner)


SPEC_FORMS = "shapes:SPLIT:N[:TASK], refcoco:ROOT:SPLIT[:MODE] (also refcoco+ and refcocog), or png:ROOT:SPLIT"


def open_dataset(spec: str) -> GroundingDataset:
    """A dataset from a spec string (see the module docstring). Raises ValueError naming the formats."""
    if "," in spec:
        return Mixture([open_dataset(part) for part in spec.split(",")])
    name, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    if name == "shapes" and len(parts) in (2, 3):
        split, length, *task = parts
        if not length.isdigit() or int(length) < 1:
            raise ValueError(f"In {spec!r}, N is the number of scenes, a whole number >= 1 (got {length!r}).")
        return ShapesGrounding(split, int(length), *(task or ["res"]))
    if name in ("refcoco", "refcoco+", "refcocog") and len(parts) in (2, 3):
        root, split, *mode = parts
        default = "concat" if split == "train" else "select_first"
        return RefCOCO(root, name, split, mode[0] if mode else default)
    if name == "png" and len(parts) == 2:
        root, split = parts
        return PNGDataset.from_root(root, split)
    raise ValueError(f"Cannot read the dataset spec {spec!r}. Use {SPEC_FORMS}.")
