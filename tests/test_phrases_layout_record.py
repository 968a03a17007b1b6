"""Phrase lookup, layout painting and record round-trips."""

import pytest
import torch

from flmm_probe.layout import Layout, View, square_box, token_runs
from flmm_probe.phrases import PhraseError, pool, resolve_spans, span_tokens
from flmm_probe.record import AttentionRecord

TEXT = "the red circle left of the red square"


def test_strings_resolve_in_reading_order():
    assert resolve_spans(TEXT, ["the red circle", "the red square"]) == [(0, 14), (23, 37)]
    # The second "red" is found after the first phrase, not at its first occurrence.
    assert resolve_spans(TEXT, ["circle", "red"]) == [(8, 14), (27, 30)]
    assert resolve_spans(TEXT, [(4, 7), "square"]) == [(4, 7), (31, 37)]


def test_strings_match_whole_words_and_leave_surrounding_whitespace_out():
    text = "the colored square left of a red circle"
    assert resolve_spans(text, ["red"]) == [(29, 32)], "not the 'red' inside 'colored'"
    assert resolve_spans(text, ["the colored square "]) == [(0, 18)]
    assert resolve_spans(text, [(28, 33), (0, 3)]) == [(29, 32), (0, 3)]
    assert resolve_spans("a cat, a dog.", ["cat,"]) == [(2, 6)] and resolve_spans("a cat, a dog.", [", a dog."]) == [(5, 13)]
    assert resolve_spans("(the cat) sat", ["(the cat)"]) == [(0, 9)], "edges that are not word characters need no boundary"


@pytest.mark.parametrize(
    "phrases,message",
    [(["blue"], "'blue' is not in the text"), ([" "], "Empty phrase"), ([(5, 50)], "outside"),
     (["red circle", "circle left"], "overlap"), ([], "No phrases"), (["ed"], "only inside a longer word"),
     ("red", "pass a list of phrases"), ([3], "neither a string nor"), ([(1, 2, 3)], "neither a string nor"),
     ([("a", "b")], "neither a string nor"), ([(3, 4)], "only whitespace")],
)
def test_bad_phrases_are_named(phrases, message):
    with pytest.raises(PhraseError, match=message):
        resolve_spans(TEXT, phrases)


def test_span_tokens_use_offsets():
    # Prompt "XX: " then the text; tokens: [bos](0,0) "XX"(0,2) ":"(2,3) "the"(4,7) "red"(8,11) "circle"(12,18)
    offsets = torch.tensor([[0, 0], [0, 2], [2, 3], [4, 7], [8, 11], [12, 18]])
    text = "the red circle"
    assert [t.tolist() for t in span_tokens(offsets, 4, [(0, 7), (8, 14)], text)] == [[3, 4], [5]]
    with pytest.raises(PhraseError, match="no token"):
        span_tokens(offsets[:5], 4, [(8, 14)], text)


def test_pool_mean_and_max():
    maps = torch.arange(12.0).reshape(1, 3, 4)  # (head, query, key)
    groups = [torch.tensor([0, 2]), torch.tensor([1])]
    assert torch.equal(pool(maps, groups)[0], maps[:, [0, 2]].mean(1))
    assert torch.equal(pool(maps, groups, "max")[1], maps[:, 1])
    with pytest.raises(ValueError):
        pool(maps, groups, "sum")


def test_single_view_paints_exactly():
    values = torch.arange(6.0)
    layout = Layout((View(torch.arange(10, 16), (2, 3), (0, 0, 30, 20)),), (20, 30))
    assert torch.equal(layout.to_image(values)["global"], values.reshape(2, 3))


def test_padded_view_drops_padding_and_tiles_stitch():
    # A 20x40 image padded to a 40x40 square seen as 4x4: rows 1-2 of the grid are the image.
    grid = torch.arange(16.0).reshape(4, 4)
    layout = Layout((View(torch.arange(16), (4, 4), square_box((20, 40), pad=True)),), (20, 40))
    assert torch.equal(layout.to_image(grid.flatten())["global"], grid[1:3])
    # Two 2x2 tiles side by side stitch into a 2x4 canvas.
    tiles = Layout(
        (View(torch.arange(4), (2, 2), (0, 0, 20, 20), "tiles"), View(torch.arange(4, 8), (2, 2), (20, 0, 40, 20), "tiles")),
        (20, 40),
    )
    canvas = tiles.to_image(torch.arange(8.0))["tiles"]
    assert torch.equal(canvas, torch.tensor([[0.0, 1, 4, 5], [2, 3, 6, 7]]))


def test_view_validation_and_runs():
    with pytest.raises(ValueError, match="needs 4"):
        View(torch.arange(3), (2, 2), (0, 0, 1, 1))
    assert [r.tolist() for r in token_runs(torch.tensor([3, 4, 5, 9, 10]))] == [[3, 4, 5], [9, 10]]


def test_record_roundtrip(tmp_path):
    record = AttentionRecord(
        text=TEXT, phrases=["the red circle"], spans=[(0, 14)],
        maps={"global": torch.rand(1, 2, 3, 4, 4), "tiles": torch.rand(1, 2, 3, 8, 8)}, image_size=(40, 40),
        hidden=[torch.rand(3, 2, 16)], meta={"model": "tiny"},
    )
    record.save(tmp_path / "r.safetensors")
    loaded = AttentionRecord.load(tmp_path / "r.safetensors")
    assert loaded.spans == record.spans and loaded.meta == record.meta and loaded.image_size == (40, 40)
    assert all(torch.equal(loaded.maps[k], record.maps[k]) for k in record.maps)
    assert torch.equal(loaded.hidden[0], record.hidden[0])
    assert loaded.fused().shape == (1, 2, 3, 8, 8)
    assert loaded.stacked().shape == (1, 12, 8, 8)


def test_stacked_channels_keep_their_layout_when_a_view_is_absent():
    from store_child import HEADS, LAYERS, synthetic_record

    tiled, single = synthetic_record(0), synthetic_record(1)  # "tiles" on even samples only
    assert set(tiled.maps) == {"global", "tiles"} and set(single.maps) == {"global"}
    kinds = ["global", "tiles"]
    a, b = tiled.stacked(kinds=kinds), single.stacked(size=(12, 12), kinds=kinds)
    assert a.shape[1] == b.shape[1] == 2 * LAYERS * HEADS
    assert (b[:, LAYERS * HEADS:] == 0).all() and b[:, : LAYERS * HEADS].abs().sum() > 0
    assert torch.equal(tiled.stacked(kinds=["global", "tiles"]), tiled.stacked())
    with pytest.raises(ValueError, match="leaves out"):
        tiled.stacked(kinds=["global"])


def test_a_fit_stacks_the_stores_view_kinds_for_every_record(tmp_path):
    from store_child import HEADS, LAYERS, record_job, sample_id

    from flmm_probe.decoder import build_grounder
    from flmm_probe.fit import FitConfig

    store = record_job(tmp_path / "store", list(range(4)))
    assert store.map_kinds() == ["global", "tiles"]
    grounder = build_grounder(FitConfig(use_refiner=False, base_channels=8, long_side=16), 2 * LAYERS * HEADS, None,
                              kinds=store.map_kinds())
    for i in range(4):  # one-tile and tiled samples alike give the decoder its channels
        record = store.read(sample_id(i))
        coarse, refined = grounder.ground(record)
        assert coarse.shape == (len(record.phrases), *record.image_size) and refined is None
