"""The attention viewer: a self-contained page whose canvases show the record's maps, checked in headless Chromium."""

import base64
import json
import re
import shutil

import numpy as np
import pytest
import torch

from flmm_probe.cli import main
from flmm_probe.record import AttentionRecord
from flmm_probe.viewer import View, view_data, view_html

LAYERS, HEADS, GRID = 3, 4, (5, 7)


def _record(seed: int = 0) -> tuple[AttentionRecord, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    maps = torch.from_numpy(rng.random((2, LAYERS, HEADS, *GRID))).float()
    text = "a red box and a blue box"
    record = AttentionRecord(text, ["a red box", "a blue box"], [(0, 9), (14, 24)], {"global": maps}, (20, 28))
    image = rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)
    masks = [np.zeros((20, 28), bool) for _ in range(2)]
    masks[0][2:8, 3:9] = True
    masks[1][10:18, 15:25] = True
    return record, image, masks


def _expected_pixels(record: AttentionRecord, phrase: int, layer: int, head: int, lut: list[int]) -> np.ndarray:
    """(y, x, 3) colours the page must show: the map min-max scaled to 0..255, through the colour table."""
    maps = record.maps["global"][phrase, layer]
    value = maps.mean(0) if head == HEADS else maps[head]
    value = value.double()
    scaled = ((value - value.min()) / (value.max() - value.min()) * 255).round().to(torch.uint8).numpy()
    return np.asarray(lut, np.uint8).reshape(256, 3)[scaled]


def test_page_is_self_contained_and_embeds_every_map():
    record, image, masks = _record()
    page = view_html(record, image=image, masks=masks, scores={"pointing": np.zeros((2, LAYERS, HEADS))})
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "nothing is fetched"
    data = view_data(record, image=image, masks=masks)
    blob = np.frombuffer(base64.b64decode(data["maps"]), np.uint8).reshape(2, LAYERS, HEADS + 1, *GRID)
    for p, l, h in [(0, 0, 0), (1, 2, 3), (1, 1, HEADS)]:
        lut = np.asarray(data["lut"], np.uint8).reshape(256, 3)
        assert (lut[blob[p, l, h]] == _expected_pixels(record, p, l, h, data["lut"])).all()
    assert json.loads(page.split('class="flmm-data">', 1)[1].split("</script>", 1)[0])["layers"] == LAYERS
    assert "flmm-view" in record._repr_html_() and "flmm-view" in View(record)._repr_html_()


@pytest.mark.parametrize("bad,message", [
    ({"kind": "tiles"}, "no 'tiles' maps"),
    ({"masks": [np.zeros((20, 28), bool)]}, "1 masks for a record of 2 phrases"),
    ({"scores": {"pointing": np.zeros((2, 2, 2))}}, "scores\\['pointing'\\] has shape"),
    ({"image": np.zeros((8, 8, 3), np.uint8)}, "the record was made on 20x28"),
])
def test_bad_views_are_refused_before_any_page(bad, message):
    record, _, _ = _record()
    with pytest.raises(ValueError, match=message):
        view_html(record, **bad)


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not shutil.which("chromedriver"):
        pytest.skip("no chromedriver: .ci/run installs Debian's chromium and chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def _canvas(driver, selector: str) -> np.ndarray:
    rgba = driver.execute_script(
        "const c = document.querySelector(arguments[0]);"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);", selector)
    return np.asarray(rgba, np.uint8).reshape(*GRID, 4)[..., :3]


def test_clicking_a_phrase_and_a_head_shows_that_map(tmp_path):
    record, image, masks = _record()
    data = view_data(record, image=image, masks=masks)
    page = tmp_path / "view.html"
    page.write_text(view_html(record, image=image, masks=masks, scores={"pointing": np.random.rand(2, LAYERS, HEADS)}))
    driver = _browser()
    try:
        driver.get(page.as_uri())
        assert (_canvas(driver, ".flmm-heat") == _expected_pixels(record, 0, 0, 0, data["lut"])).all()
        driver.find_element("css selector", '.flmm-phrase[data-phrase="1"]').click()
        driver.find_element("css selector", '.flmm-cell[data-layer="2"][data-head="3"]').click()
        assert (_canvas(driver, ".flmm-heat") == _expected_pixels(record, 1, 2, 3, data["lut"])).all()
        assert driver.execute_script("return location.hash") == "#phrase=1&layer=2&head=3&opacity=0.6&sort=pointing"
        # Keyboard: up one layer, right one head (to the layer's head average).
        view = driver.find_element("css selector", ".flmm-view")
        view.send_keys("\ue013")  # arrow up
        view.send_keys("\ue014")  # arrow right
        assert (_canvas(driver, ".flmm-heat") == _expected_pixels(record, 1, 1, HEADS, data["lut"])).all()
        # A shared URL opens on its state.
        driver.get(page.as_uri() + "#phrase=0&layer=1&head=2&opacity=0.3")
        assert (_canvas(driver, ".flmm-heat") == _expected_pixels(record, 0, 1, 2, data["lut"])).all()
        assert driver.execute_script("return document.querySelector('.flmm-heat').style.opacity") == "0.3"
    finally:
        driver.quit()


def test_view_command_writes_a_page_for_a_record_file(tmp_path, capsys):
    record, _, _ = _record()
    record.save(tmp_path / "r.safetensors")
    assert main(["view", str(tmp_path / "r.safetensors"), "--out", str(tmp_path / "page.html")]) == 0
    assert "view -> " in capsys.readouterr().out and (tmp_path / "page.html").read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(ValueError, match="no 'tiles' maps"):
        main(["view", str(tmp_path / "r.safetensors"), "--out", str(tmp_path / "bad.html"), "--kind", "tiles"])
    assert not (tmp_path / "bad.html").exists()
