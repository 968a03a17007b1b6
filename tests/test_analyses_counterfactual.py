"""Words or position: permuted texts, and the scores of a head that follows words against one that follows slots."""

import numpy as np
import pytest
import torch
from PIL import Image

from analyses.counterfactual import (
    counterfactual_frame,
    counterfactual_table,
    derangement,
    head_summary,
    permutable,
    permute,
    summary_line,
)
from flmm_probe.data.samples import GroundingSample, SamplePhrase
from flmm_probe.record import AttentionRecord

SIZE = 16


def _sample(sample_id: str, names: list[str], columns: list[int], stuff: str | None = None) -> GroundingSample:
    """A text listing ``names`` ("a red cross, a blue circle and ..."), object k a 4x4 block at column ``columns[k]``."""
    parts = list(names) + ([stuff] if stuff else [])
    text, phrases = "we see ", []
    for k, part in enumerate(parts):
        text += ", " if 0 < k < len(parts) - 1 else (" and " if k else "")
        phrases.append(SamplePhrase(part, len(text), len(text) + len(part), False, part != stuff))
        text += part
    text += "."
    masks = np.zeros((len(parts), SIZE, SIZE), bool)
    for k, column in enumerate(columns):
        masks[k, 4:8, column : column + 4] = True
    if stuff:
        masks[-1, 12:] = True
    return GroundingSample(sample_id, None, (SIZE, SIZE), text, phrases, {}, load_masks=lambda: masks,
                           load_image=lambda: Image.new("RGB", (SIZE, SIZE)))


class PlantedBackbone:
    """Records whose head (0, 0) peaks on what a phrase's words name, and head (0, 1) on what its slot held:
    the k-th phrase in text order gets the mask of the sample's k-th phrase in the original text."""

    def __init__(self, samples: list[GroundingSample]):
        self.by_text = {p.text: s.masks()[i] for s in samples for i, p in enumerate(s.phrases)}
        self.owner = {p.text: s for s in samples for p in s.phrases}

    def record_batch(self, inputs, batch_size=1, hidden_states=True, progress=False):
        records = []
        for _, text, spans in inputs:
            words = [text[a:b] for a, b in spans]
            in_order = sorted(self.owner[words[0]].phrases, key=lambda p: p.start)
            rank = {start: k for k, start in enumerate(sorted(a for a, _ in spans))}
            maps = torch.zeros(len(spans), 1, 2, SIZE, SIZE)
            for p, (start, _) in enumerate(spans):
                maps[p, 0, 0] = torch.from_numpy(self.by_text[words[p]]).float()
                maps[p, 0, 1] = torch.from_numpy(self.by_text[in_order[rank[start]].text]).float()
            records.append(AttentionRecord(text, words, list(spans), {"global": maps}, (SIZE, SIZE)))
        return records


SAMPLES = [
    _sample("a", ["a red cross", "a blue circle", "a green square"], [0, 6, 12], stuff="a gray wall"),
    _sample("b", ["a small cross", "a large cross"], [10, 2]),
    _sample("c", ["a cyan diamond", "a cyan diamond", "a white circle"], [0, 5, 11]),  # a repeated text
    _sample("d", ["a lone circle"], [4]),
]


def test_permuted_text_moves_the_words_and_keeps_what_lies_between():
    sample = SAMPLES[0]
    movable, reasons = permutable(sample)
    assert movable == [0, 1, 2] and reasons == {"phrase names stuff": 1}
    p = permute(sample, movable, [2, 0, 1])
    assert p.text == "we see a green square, a red cross, a blue circle and a gray wall."
    assert [p.text[a:b] for a, b in p.spans] == ["a green square", "a red cross", "a blue circle"]
    assert p.phrases == (2, 0, 1) and p.slots == (0, 1, 2)
    rng = np.random.default_rng(0)
    for n in (2, 3, 5):
        for _ in range(20):
            order = derangement(n, rng)
            assert sorted(order) == list(range(n)) and (order != np.arange(n)).all()
    with pytest.raises(ValueError, match="at least two"):
        derangement(1, rng)


def test_words_and_slots_are_told_apart_and_bad_samples_are_counted():
    frame, skipped = counterfactual_frame(PlantedBackbone(SAMPLES), SAMPLES, seed=3)
    assert skipped == {"phrase: phrase names stuff": 1, "sample: one phrase": 1,
                       "sample: fewer than two permutable phrases (phrase text repeated)": 1}
    assert set(frame["sample"]) == {"a", "b"}
    table = counterfactual_table(frame, n_boot=100)
    words, slots = head_summary(table, 0, 0), head_summary(table, 0, 1)
    assert words["permuted/named"][0] == 1 and words["original/named"][0] == 1 and words["permuted/slot"][0] == 0
    assert slots["permuted/named"][0] == 0 and slots["permuted/slot"][0] == 1 and slots["original/named"][0] == 1
    assert words["permuted/named_minus_slot"][0] == 1 and slots["permuted/named_minus_slot"][0] == -1
    # Sample b lists its objects right to left: in the original order the slot-follower points at the object of
    # the slot's left-to-right rank only where the text happens to list objects left to right (sample a).
    rank = frame[(frame["order"] == "original") & (frame["metric"] == "rank") & (frame["layer"] == 0) & (frame["head"] == 1)]
    assert rank.groupby("sample")["value"].mean().to_dict() == {"a": 1.0, "b": 0.0}
    assert "L0H0 points at the object the phrase names 1.00" in summary_line(table, frame)


def test_no_permutable_sample_is_a_named_error():
    with pytest.raises(ValueError, match="No sample has two phrases"):
        counterfactual_frame(PlantedBackbone(SAMPLES), SAMPLES[2:])
