"""The README's first command, end to end at a small size, and the results page it writes."""

import json
import shutil

from PIL import Image

from flmm_probe.cli import main


def test_demo_runs_end_to_end_and_its_results_page_reads_the_run(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--scenes", "4", "--train-scenes", "8", "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    for section in ("## Where grounding lives", "## Words or position", "## Attention alone", "## The fitted decoder",
                    "## Grounded applications"):
        assert section in printed
    assert "(no " not in printed, "every section found its files"
    assert " scenes drawn by other code recorded again" in printed, "words or position, also on redrawn scenes"
    results = (out / "results.md").read_text()
    assert printed.startswith(results)
    gcg = json.loads((out / "gcg.json").read_text())
    assert f"| fitted decoder + refiner | {100 * gcg['recall']:.1f} | {100 * gcg['miou']:.1f} |" in results
    cot = json.loads((out / "cot.json").read_text())
    assert f"| grounded crop (chain of thought) | {cot['cot/accuracy']:.3f} |" in results
    assert (out / "segment_overlay.png").exists() and any((out / "analysis" / "figures").glob("counterfactual.png"))
    # The report command prints the same page from the folder.
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out == results
    # The README's viewer screenshot, made from the run (in a real browser, where .ci/run installs one).
    if shutil.which("chromedriver"):
        from figures.viewer_screenshot import main as screenshot

        shown = screenshot([str(out), "--out", str(tmp_path / "viewer.png")])
        assert "shapes/test/0/png/0" in shown and Image.open(tmp_path / "viewer.png").size[0] >= 800
