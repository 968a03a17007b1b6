"""Bad input, one row a kind: each gets its named error with a message that says what to do, never a silent result.

The API rows call a public function; the CLI rows run `flmm-probe` and read its parse-time error.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from analyses.run import analyze
from flmm_probe import load_backbone
from flmm_probe.cli import main
from flmm_probe.data.samples import IncompleteStoreError
from flmm_probe.data.sources import open_dataset
from flmm_probe.images import ImageError, to_rgb
from flmm_probe.phrases import PhraseError, resolve_spans
from flmm_probe.record_job import record_dataset
from flmm_probe.store import Store

from tiny import image, tiny_llava

TEXT = "the colored square left of a red circle"

PHRASES = [
    (["blue"], "is not in the text"),
    (["red", "blue"], "is not in the text"),
    (["olo"], "only inside a longer word"),
    (["ed"], "only inside a longer word"),
    ("red", "pass a list of phrases"),
    ([], "No phrases"),
    (["  "], "Empty phrase"),
    ([""], "Empty phrase"),
    ([3], "neither a string nor"),
    ([None], "neither a string nor"),
    ([(1.5, 3)], "neither a string nor"),
    ([(0, 3, 5)], "neither a string nor"),
    ([(5, 2)], "empty or outside"),
    ([(0, 400)], "empty or outside"),
    ([(-2, 3)], "empty or outside"),
    ([(3, 4)], "only whitespace"),
    (["colored square", "square left"], "overlap"),
]


@pytest.mark.parametrize("phrases,message", PHRASES)
def test_bad_phrases(phrases, message):
    with pytest.raises(PhraseError, match=message):
        resolve_spans(TEXT, phrases)


IMAGES = [
    (np.zeros((0, 5, 3), np.uint8), "is empty"),
    (np.zeros((5, 0), np.uint8), "is empty"),
    (Image.new("L", (0, 0)), "is empty"),
    (np.full((4, 4, 3), 2.0), "floats outside 0..1"),
    (np.full((4, 4), -0.5, np.float32), "floats outside 0..1"),
    (np.full((4, 4), np.inf), "NaN or infinite"),
    (np.full((4, 4), 70000, np.int64), "integers in 70000..70000"),
    (np.full((4, 4), -3, np.int16), "integers in -3..-3"),
    (np.zeros((4, 4, 5), np.uint8), "expected \\(H, W\\)"),
    (np.zeros((4,), np.uint8), "expected \\(H, W\\)"),
    (np.zeros((4, 4), "U1"), "dtype <U1"),
]


@pytest.mark.parametrize("array,message", IMAGES)
def test_bad_images(array, message):
    with pytest.raises(ImageError, match=message):
        to_rgb(array)


def test_bad_image_files_are_named(tmp_path):
    (tmp_path / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n0000")
    with pytest.raises(ImageError, match="truncated.png: cannot be read"):
        to_rgb(tmp_path / "truncated.png")
    with pytest.raises(ImageError, match="missing.jpg: no such file"):
        to_rgb(str(tmp_path / "missing.jpg"))


@pytest.fixture(scope="module")
def llava():
    return load_backbone(*tiny_llava())


TEXTS = [
    ("", "non-empty string"),
    ("   ", "non-empty string"),
    (None, "non-empty string"),
    ("a red circle ", "must not end with whitespace"),
    ("a red circle <image>", "image placeholder"),
]


@pytest.mark.parametrize("text,message", TEXTS)
def test_bad_texts(llava, text, message):
    with pytest.raises(ValueError, match=message):
        llava.record(image(32, 32), text, ["red"])


SPECS = [
    ("shapes:test:10:caption:extra", "Cannot read the dataset spec"),
    ("shapes:test", "Cannot read the dataset spec"),
    ("shapes:test:ten", "whole number >= 1"),
    ("shapes:test:0", "whole number >= 1"),
    ("shapes:tset:5", "Unknown shapes split"),
    ("shapes:test:5:captions", "Unknown shapes task"),
    ("png:/data/png", "Cannot read the dataset spec"),
    ("coco:/data:val", "Cannot read the dataset spec"),
]


@pytest.mark.parametrize("spec,message", SPECS)
def test_bad_dataset_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        open_dataset(spec)


CLI = [
    (["record", "--data", "shapes:test:2", "--store", "s", "--batch-size", "0"], "--batch-size: expected a whole number >= 1"),
    (["record", "--data", "shapes:test:2", "--store", "s", "--batch-size", "-4"], "--batch-size: expected a whole number >= 1"),
    (["record", "--data", "shapes:test:2", "--store", "s", "--shard-size", "x"], "--shard-size: expected a whole number"),
    (["fit", "--store", "s", "--data", "shapes:test:2", "--out", "o", "--epochs", "0"], "--epochs: expected a whole number >= 1"),
    (["fit", "--store", "s", "--data", "shapes:test:2", "--out", "o", "--lr", "0"], "--lr: expected a number > 0"),
    (["fit", "--store", "s", "--data", "shapes:test:2", "--out", "o", "--long-side", "-1"], "--long-side: expected"),
    (["demo", "--scenes", "0"], "--scenes: expected a whole number >= 1"),
    (["gcg", "--run", "r", "--out", "o", "--scenes", "0"], "--scenes: expected a whole number >= 1"),
    (["chat", "--run", "r", "--image", "i", "--question", "q", "--max-new-tokens", "0"], "--max-new-tokens: expected"),
    (["record", "--store", "s"], "the following arguments are required: --data"),
]


@pytest.mark.parametrize("argv,message", CLI)
def test_bad_cli_arguments_are_refused_at_parse_time(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_store_missing_samples_is_refused_unless_partial(tmp_path):
    backbone = load_backbone("organism")
    store = Store.create(tmp_path / "store", {"backbone": "organism"})
    record_dataset(backbone, open_dataset("shapes:test:2:caption"), store)
    store.consolidate()
    dataset = open_dataset("shapes:test:3:caption")
    with pytest.raises(IncompleteStoreError, match="holds 2 of the dataset's 3 good samples .* pass --partial"):
        analyze(store, dataset, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists(), "nothing is written before the refusal"
    analyze(store, dataset, tmp_path / "run", progress=False, partial=True)
    assert (tmp_path / "run" / "coverage.json").read_text() == '{"scored": 2, "in_dataset": 3}'


def test_loading_errors_teach(tmp_path, monkeypatch):
    from flmm_probe.backbones import ModelNotFoundError
    from flmm_probe.decoder.refiner import load_sam

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache, and HF_HUB_OFFLINE is set.*organism.*llava_next"):
        load_backbone("nobody/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="folder without config.json"):
        load_backbone(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="sam_vit_l_0b3195.pth"):
        load_sam("vit_l", tmp_path / "missing.pth")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is not a SAM checkpoint"):
        load_sam(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="Unknown SAM 'vit_q'"):
        load_sam("vit_q")



@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A finished two-epoch fit (no refiner) and its store: (fit argv without --out, run folder)."""
    root = tmp_path_factory.mktemp("fitted")
    data = "shapes:train:2:caption"
    assert main(["record", "--data", data, "--store", str(root / "store")]) == 0
    argv = ["fit", "--store", str(root / "store"), "--data", data, "--epochs", "2", "--no-refiner", "--base-channels", "8",
            "--long-side", "16"]
    assert main(argv + ["--out", str(root / "fit")]) == 0
    return argv, root / "fit"


def _flip(path, offset=-5):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# (file, fault, what reads it: "load" or "resume", the error, its message)
FIT_FAULTS = [
    ("grounder.safetensors", "flip", "load", ValueError, "grounder.safetensors is damaged.*epoch checkpoints"),
    ("grounder.safetensors", "truncate", "load", ValueError, "grounder.safetensors cannot be read"),
    ("grounder.safetensors", "delete", "load", FileNotFoundError, "grounder.safetensors is missing"),
    ("epoch_002.safetensors", "flip", "resume", ValueError, "epoch_002.safetensors is damaged"),
    ("train_state_002.pt", "flip", "resume", ValueError, "train_state_002.pt is damaged.*fit into a new folder"),
    ("train_state_002.pt", "truncate", "resume", ValueError, "train_state_002.pt is damaged"),
    ("train_state_002.pt", "delete", "resume", FileNotFoundError, "train_state_002.pt is missing.*still load"),
    ("grounder.json", "truncate", "load", ValueError, "grounder.json is damaged"),
    ("grounder.json", "truncate", "resume", ValueError, "grounder.json is damaged"),
    ("log.jsonl", "truncate", "resume", ValueError, "log.jsonl has .* fewer than"),
    ("log.jsonl", "flip", "resume", ValueError, "log.jsonl is damaged"),
    ("log.jsonl", "digit", "resume", ValueError, "log.jsonl is damaged.*not the ones its checkpoint recorded"),
]


@pytest.mark.parametrize("name,fault,reader,error,message", FIT_FAULTS)
def test_fit_faults_are_named_and_every_good_file_still_serves(fitted, tmp_path, name, fault, reader, error, message):
    import shutil

    from flmm_probe.decoder import load_grounder

    argv, original = fitted
    run = tmp_path / "fit"
    shutil.copytree(original, run)
    path = run / name
    if fault == "flip":
        _flip(path, -3 if name == "log.jsonl" else -5)  # log.jsonl: inside the last line's JSON, before "}\n"
    elif fault == "digit":  # still valid JSON: a changed number
        text = path.read_text()
        at = text.rindex('"loss": ') + len('"loss": ')
        path.write_text(text[:at] + ("1" if text[at] != "1" else "2") + text[at + 1:])
    elif fault == "truncate":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    else:
        path.unlink()
    with pytest.raises(error, match=message):
        if reader == "load":
            load_grounder(run)
        else:
            main(argv + ["--out", str(run), "--resume"])
    # Files the fault did not touch still serve: an intact epoch checkpoint loads next to an intact grounder.json.
    if name != "grounder.json":
        load_grounder(run / ("epoch_001.safetensors" if name == "epoch_002.safetensors" else "epoch_002.safetensors"))


def test_damaged_or_missing_fit_weights_are_named(tmp_path):
    from flmm_probe.decoder import load_grounder

    data, run = "shapes:train:2:caption", tmp_path / "fit"
    assert main(["record", "--data", data, "--store", str(tmp_path / "store")]) == 0
    assert main(["fit", "--store", str(tmp_path / "store"), "--data", data, "--out", str(run), "--epochs", "1",
                 "--no-refiner", "--base-channels", "8", "--long-side", "16"]) == 0
    load_grounder(run)
    weights = run / "grounder.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="grounder.safetensors cannot be read .* epoch checkpoints"):
        load_grounder(run)
    load_grounder(run / "epoch_001.safetensors")  # the epoch checkpoint beside it still loads
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="grounder.safetensors is missing"):
        load_grounder(run)
