"""How large is a viewer page for a real model's record, and how soon does it paint?

    python benchmarks/viewer_page.py [--out docs/viewer_page.json]

A LLaVA-1.5-7B-shaped record (32 layers x 32 heads, 24 x 24 maps, 5 phrases, a 336 x 336 image) and a
LLaVA-NeXT-shaped one (the same model with a "global" 24 x 24 view and a 48 x 48 "tiles" view, shown fused)
are written as pages; headless Chromium (Debian's chromium and chromium-driver, through selenium) opens each
three times, and the page reports when its first render ended (ms after navigation start).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from flmm_probe.record import AttentionRecord
from flmm_probe.viewer import view_html

SHAPES = {"llava-1.5-7b": {"global": (24, 24)}, "llava-next-7b (fused)": {"global": (24, 24), "tiles": (48, 48)}}


def record(views: dict[str, tuple[int, int]], phrases: int = 5, layers: int = 32, heads: int = 32) -> AttentionRecord:
    generator = torch.Generator().manual_seed(0)
    maps = {kind: torch.rand(phrases, layers, heads, *grid, generator=generator).softmax(-1) for kind, grid in views.items()}
    text = " and ".join(f"phrase number {k}" for k in range(phrases))
    spans = [(text.index(f"phrase number {k}"), text.index(f"phrase number {k}") + len(f"phrase number {k}")) for k in range(phrases)]
    return AttentionRecord(text, [text[a:b] for a, b in spans], spans, maps, (336, 336))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    results = {}
    image = np.random.default_rng(0).integers(0, 255, (336, 336, 3), dtype=np.uint8)
    try:
        with tempfile.TemporaryDirectory() as folder:
            for name, views in SHAPES.items():
                page = Path(folder) / "page.html"
                page.write_text(view_html(record(views), image=image))
                times = []
                for _ in range(3):
                    driver.get("about:blank")
                    driver.get(page.as_uri())
                    times.append(float(driver.find_element("css selector", ".flmm-view").get_attribute("data-painted-at")))
                results[name] = {"bytes": page.stat().st_size, "painted_ms_median": statistics.median(times), "painted_ms": times}
    finally:
        driver.quit()
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
