"""An interactive attention viewer: one self-contained HTML page (or notebook cell) per record.

    html = view_html(record, image=image, masks=masks, scores=scores)   # str: a whole page
    Path("view.html").write_text(html)
    record                                                          # in Jupyter: the same view, inline

The page shows the image, the text with its phrases (click one; its tokens on hover), a layer x head grid of
every map of the chosen phrase plus each layer's head average (click a cell, or move with the arrow keys;
``[`` and ``]`` step through phrases), the chosen map enlarged over the image with an opacity slider, its
value range and colour scale, the ground-truth mask's outline and the fitted coarse and refined masks' outlines where given,
and the heads ranked by a score where an analysis gives scores. The state lives in the URL hash
(``#phrase=1&layer=14&head=7``), so a view can be shared.

Nothing is fetched: the image, the outlines and the maps are embedded. Each map is stored as 8-bit values,
min-max scaled per map (its range is shown), in one base64 blob of (phrase, layer, head + 1, y, x) bytes.
A LLaVA-1.5-7B record (32 layers x 32 heads, 24 x 24 maps, 5 phrases) makes a page of about 4 MB.
Backbones with several views (LLaVA-NeXT's base image and tiles, InternVL's and Idefics3's thumbnail and
crops) are shown fused: every view kind resized to the finest grid and averaged (``AttentionRecord.fused``);
``kind`` picks one view instead.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from importlib import resources
from itertools import count

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from .images import ImageLike, to_rgb
from .record import AttentionRecord

OUTLINE_COLOURS = {"mask": (255, 255, 255), "coarse": (86, 180, 233), "refined": (230, 159, 0)}  # Okabe-Ito
SCORE_METRICS = ("pointing", "auroc", "mass_in_mask")
DISPLAY_WIDTH = 384  # px of the enlarged map
_ids = count()

_CSS = """
.flmm-view { font: 13px/1.4 system-ui, sans-serif; color: #222; --cell: 22px; outline: none; }
.flmm-view .flmm-text { margin: 6px 0 10px; max-width: 60em; }
.flmm-view .flmm-phrase { background: #e8e8e8; border-radius: 3px; padding: 0 2px; cursor: pointer; }
.flmm-view .flmm-phrase.flmm-on { background: #f0c36d; }
.flmm-view .flmm-main { display: flex; gap: 18px; align-items: flex-start; flex-wrap: wrap; }
.flmm-view .flmm-stage { position: relative; width: %(width)dpx; }
.flmm-view .flmm-stage > * { position: absolute; left: 0; top: 0; width: 100%%; height: 100%%; }
.flmm-view .flmm-stage > img.flmm-image { position: static; display: block; height: auto; }
.flmm-view canvas { image-rendering: pixelated; }
.flmm-view .flmm-grid { display: grid; gap: 2px; align-items: center; }
.flmm-view .flmm-cell { width: var(--cell); height: var(--cell); cursor: pointer; border: 1px solid transparent; }
.flmm-view .flmm-cell.flmm-on { border-color: #d55e00; }
.flmm-view .flmm-label { font-size: 10px; color: #666; text-align: center; }
.flmm-view table.flmm-scores td { padding: 0 6px; cursor: pointer; }
.flmm-view table.flmm-scores tr.flmm-on { background: #f0c36d; }
.flmm-view .flmm-controls { margin: 6px 0; }
"""


def _png(array: np.ndarray) -> str:
    """A data URL of an (H, W, 3|4) uint8 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _outline(mask: np.ndarray, colour: tuple[int, int, int]) -> str:
    """A data URL of a transparent PNG holding the one-pixel outline of an (H, W) bool mask."""
    mask = np.asarray(mask, bool)
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    edge = mask & ~inner
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[edge] = (*colour, 255)
    return _png(rgba)


def _quantised(maps: torch.Tensor) -> tuple[bytes, list[list[float]]]:
    """(phrase, layer, column, y, x) float maps -> their bytes min-max scaled to 0..255 per map, and each map's (min, max)."""
    flat = maps.flatten(-2).double()
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    scaled = ((flat - low) / (high - low).clamp_min(1e-30) * 255).round().to(torch.uint8)
    ranges = torch.cat([low, high], -1).reshape(-1, 2).tolist()
    return scaled.numpy().tobytes(), ranges


def view_data(record: AttentionRecord, image: ImageLike | None = None, masks: Sequence[np.ndarray] | None = None,
              fitted: dict[str, Sequence[np.ndarray]] | None = None, scores: dict[str, np.ndarray] | None = None,
              tokens: Sequence[Sequence[str]] | None = None, kind: str = "fused", title: str = "") -> dict:
    """The JSON-ready data of a view (see ``view_html``)."""
    if kind != "fused" and kind not in record.maps:
        raise ValueError(f"The record has no {kind!r} maps: it has {sorted(record.maps)} (or 'fused', all of them averaged).")
    maps = record.fused() if kind == "fused" else record.maps[kind]  # (phrase, layer, head, y, x)
    n = len(record.phrases)
    for name, given in (("masks", masks), *(((f"fitted {k}", v) for k, v in (fitted or {}).items()))):
        if given is not None and len(given) != n:
            raise ValueError(f"{len(given)} {name} for a record of {n} phrases: give one per phrase, in the record's order.")
    for metric, values in (scores or {}).items():
        if np.shape(values) != tuple(maps.shape[:3]):
            raise ValueError(f"scores[{metric!r}] has shape {np.shape(values)}; the record needs (phrase, layer, head) = "
                             f"{tuple(maps.shape[:3])}.")
    blob, ranges = _quantised(torch.cat([maps, maps.mean(2, keepdim=True)], dim=2))
    lut = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    overlays: dict[str, list[str]] = {}
    if masks is not None:
        overlays["mask"] = [_outline(m, OUTLINE_COLOURS["mask"]) for m in masks]
    for name, given in (fitted or {}).items():
        overlays[name] = [_outline(m, OUTLINE_COLOURS[name]) for m in given]
    height, width = record.image_size
    picture = to_rgb(image) if image is not None else None
    if picture is not None and (picture.height, picture.width) != (height, width):
        raise ValueError(f"The image is {picture.height}x{picture.width}, the record was made on {height}x{width}.")
    return {
        "title": title, "text": record.text, "layers": int(maps.shape[1]), "heads": int(maps.shape[2]),
        "grid": list(maps.shape[-2:]), "size": [height, width],
        "phrases": [{"text": p, "start": s, "end": e, "tokens": list(tokens[i]) if tokens else []}
                    for i, (p, (s, e)) in enumerate(zip(record.phrases, record.spans))],
        "image": _png(np.asarray(picture)) if picture is not None else "",
        "maps": base64.b64encode(blob).decode(), "range": ranges, "lut": lut.ravel().tolist(),
        "overlays": overlays, "scores": {k: np.asarray(v, float).round(4).tolist() for k, v in (scores or {}).items()},
    }


def view_fragment(data: dict, standalone: bool = False) -> str:
    """The view as an HTML fragment (a div with its style, data and script), for a page or a notebook cell."""
    data = {**data, "standalone": standalone}
    height, width = data["size"]
    script = resources.files("flmm_probe").joinpath("viewer.js").read_text()
    image = (f'<img class="flmm-image" src="{data["image"]}" alt="image">' if data["image"] else
             f'<div class="flmm-image" style="position:static;height:{round(DISPLAY_WIDTH * height / width)}px;background:#000"></div>')
    overlays = "".join(f'<img class="flmm-overlay" data-kind="{k}" alt="">' for k in data["overlays"])
    legend = " ".join(f'<span style="color:rgb{OUTLINE_COLOURS[k]};background:#333;padding:0 3px">{k}</span>'
                      for k in data["overlays"])
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return f"""<div class="flmm-view" id="flmm-view-{next(_ids)}">
<style>{_CSS % {"width": DISPLAY_WIDTH}}</style>
<script type="application/json" class="flmm-data">{payload}</script>
<div><b>{html.escape(data["title"])}</b></div>
<div class="flmm-text"></div>
<div class="flmm-main">
 <div>
  <div class="flmm-stage">{image}<canvas class="flmm-heat"></canvas>{overlays}</div>
  <div class="flmm-controls">opacity <input class="flmm-opacity" type="range" min="0" max="1" step="0.05"> {legend}</div>
  <div class="flmm-title"></div>
  <div><canvas class="flmm-scale" style="width:{DISPLAY_WIDTH}px;height:10px"></canvas></div>
  <div class="flmm-controls">heads by <select class="flmm-sort"></select></div>
  <table class="flmm-scores"></table>
 </div>
 <div class="flmm-grid"></div>
</div>
<script>{script}</script>
</div>"""


def view_html(record: AttentionRecord, image: ImageLike | None = None, masks: Sequence[np.ndarray] | None = None,
              fitted: dict[str, Sequence[np.ndarray]] | None = None, scores: dict[str, np.ndarray] | None = None,
              tokens: Sequence[Sequence[str]] | None = None, kind: str = "fused", title: str = "") -> str:
    """A whole HTML page viewing ``record``.

    image: the image the record was made on (its size); masks: per phrase, the (H, W) bool ground truth;
    fitted: {"coarse": masks, "refined": masks} of a fitted grounder; scores: {metric: (phrase, layer, head)};
    tokens: per phrase, its token strings; kind: "fused" or one of the record's view kinds.
    """
    return View(record, image=image, masks=masks, fitted=fitted, scores=scores, tokens=tokens, kind=kind, title=title).page()


class View:
    """A view (``view_data``'s options) that shows itself in Jupyter and makes a whole page."""

    def __init__(self, record: AttentionRecord, **options) -> None:
        self.data = view_data(record, **options)

    def _repr_html_(self) -> str:
        return view_fragment(self.data)

    def page(self) -> str:
        title = html.escape(self.data["title"] or self.data["text"])
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>"
                f"<body>{view_fragment(self.data, standalone=True)}</body></html>\n")


def store_view(store, sample_id: str | None = None, dataset=None, analysis=None, grounder=None, kind: str = "fused",
               tokenizer=None) -> View:
    """The view of one store sample (default: its first): ``dataset`` (the one the store was recorded from) gives the
    image and masks, ``analysis`` (an ``analyze`` run folder) the per-head scores, ``grounder`` (needs ``dataset``)
    the fitted coarse and refined masks, ``tokenizer`` each phrase's tokens."""
    from pathlib import Path

    import pandas as pd

    sample_id = sample_id or store.manifest["sample_id"].iloc[0]
    record = store.read(sample_id)  # KeyError naming the store if it lacks the sample
    sample = None
    if dataset is not None:
        sample = next((s for s in dataset if s.sample_id == sample_id), None)
        if sample is None:
            raise KeyError(f"Sample {sample_id!r} is in the store but not in the dataset given: pass the spec it was recorded from.")
        if [p.text for p in sample.phrases] != record.phrases:
            raise ValueError(f"Sample {sample_id!r}: the dataset's phrases {[p.text for p in sample.phrases]} are not the "
                             f"stored ones {record.phrases}: the store was recorded from another dataset.")
    scores = None
    if analysis is not None:
        frame = pd.read_parquet(Path(analysis) / "scores.parquet", filters=[("sample", "==", sample_id)])
        frame = frame[(frame["head"] >= 0) & frame["metric"].isin(SCORE_METRICS)]
        if frame.empty:
            raise ValueError(f"{analysis}/scores.parquet has no scores of sample {sample_id!r}: analyse the store it comes from.")
        shape = (len(record.phrases), record.num_layers, record.num_heads)
        scores = {}
        for metric, part in frame.groupby("metric", observed=True):
            values = np.full(shape, np.nan)
            values[part["phrase"].to_numpy(), part["layer"].to_numpy(), part["head"].to_numpy()] = part["value"].to_numpy()
            scores[str(metric)] = values
    fitted = None
    if grounder is not None:
        if sample is None:
            raise ValueError("Fitted masks need the image: pass the dataset the store was recorded from.")
        expected, given = grounder.decoder.config.in_channels, grounder.channels(record).shape[1]
        if expected != given:
            raise ValueError(f"The fitted run reads {expected} map channels; this record gives {given}: it was fitted on "
                             "another backbone or view layout.")
        embedding, input_size = None, None
        if grounder.refiner is not None:
            embedding, input_size, _ = grounder.refiner.embed(sample.image())
        with torch.no_grad():
            coarse, refined = grounder.ground(record, embedding, input_size)
        fitted = {"coarse": list((coarse > 0).cpu().numpy())}
        if refined is not None:
            fitted["refined"] = list((refined > 0).cpu().numpy())
    tokens = None
    if tokenizer is not None:
        offsets = tokenizer(record.text, add_special_tokens=False, return_offsets_mapping=True)
        pieces = tokenizer.convert_ids_to_tokens(offsets["input_ids"])
        tokens = [[t for t, (a, b) in zip(pieces, offsets["offset_mapping"]) if a < e and b > s] for s, e in record.spans]
    return View(record, image=sample.image() if sample else None, masks=list(sample.masks()) if sample else None,
                fitted=fitted, scores=scores, tokens=tokens, kind=kind, title=sample_id)
