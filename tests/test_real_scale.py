"""benchmarks/real_scale.py runs end to end in its CPU mode (LLaVA-1.5-7B's widths, one layer each)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import real_scale  # noqa: E402


def test_real_scale_cpu_mode(tmp_path):
    out = real_scale.main(["--layers", "1", "--vision-layers", "1", "--scenes", "2", "--task", "caption", "--dtype", "float32",
                           "--device", "cpu", "--out", str(tmp_path / "real_scale.json")])
    assert out["record"]["recorded"] == 2 and not out["record"]["bad"]
    # One layer's 32 heads over the 24 x 24 grid of 576 image tokens, float16.
    assert out["record"]["store_bytes_per_phrase"]["maps_global"] == 1 * 32 * 24 * 24 * 2
    assert out["evaluate"]["phrases"] > 0 and (tmp_path / "real_scale.json").exists()
