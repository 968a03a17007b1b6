"""The README's viewer screenshot: a demo run's held-out sample in the viewer, on the run's best head.

    python figures/viewer_screenshot.py runs/demo --out docs/figures/viewer.png [--sample ID] [--phrase 0]

The page is ``flmm-probe view``'s for the demo's test store (its per-head scores and fitted masks included),
opened in headless Chromium (Debian's chromium and chromium-driver, through selenium) at the phrase and at
the layer and head that rank first in the run's localization-head table; prints what it shows, for the caption.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from flmm_probe.cli import main as cli
from flmm_probe.store import Store


def main(argv: list[str] | None = None) -> str:
    """Write the screenshot; returns what it shows (also printed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a `flmm-probe demo` output folder")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/viewer.png"))
    parser.add_argument("--sample", help="a test-store sample id (default: the store's first narrative, a PNG sample)")
    parser.add_argument("--phrase", type=int, default=0, help="which of the sample's phrases to show")
    args = parser.parse_args(argv)
    settings = json.loads((args.run / "run.json").read_text())
    data = f"shapes:test:{settings['scenes']}:mix"
    manifest = Store(args.run / "store_test").manifest
    sample = args.sample or str(manifest.loc[manifest["sample_task"] == "png", "sample_id"].iloc[0])
    best = pd.read_parquet(args.run / "analysis" / "head_table.parquet").sort_values("rank").iloc[0]
    layer, head = int(best["layer"]), int(best["head"])
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "view.html"
        cli(["view", str(args.run / "store_test"), "--sample", sample, "--data", data, "--analysis", str(args.run / "analysis"),
             "--run", str(args.run / "fit"), "--out", str(page)])
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        try:
            driver.get(f"{page.as_uri()}#phrase={args.phrase}&layer={layer}&head={head}&opacity=0.6&sort=pointing")
            phrase = driver.find_element("css selector", f'.flmm-phrase[data-phrase="{args.phrase}"]').text
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    shown = f"{args.out}: sample {sample}, phrase {phrase!r}, layer {layer} head {head} (the run's top-ranked head)"
    print(shown)
    return shown


if __name__ == "__main__":
    main()
