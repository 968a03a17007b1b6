"""Fitting the F-LMM heads from a store: it learns, reloads exactly, is seeded, never runs the LMM, keeps SAM's encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flmm_probe import fit as fit_module
from flmm_probe import load_backbone
from flmm_probe.cache import EmbeddingCache
from flmm_probe.data.sources import ShapesGrounding
from flmm_probe.decoder import build_grounder, load_grounder
from flmm_probe.decoder.objective import lr_factor, mask_loss
from flmm_probe.fit import FitConfig, iter_log
from flmm_probe.fit import fit as fit_grounder
from flmm_probe.organism.build import SamConfig, build_sam
from flmm_probe.record_job import record_dataset
from flmm_probe.store import Store

from tiny import tiny_llava

# Small enough for a few seconds per fit on one shared core.
CONFIG = dict(epochs=3, batch_size=4, lr=1e-3, base_channels=8, stages=3, long_side=16, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_sam() -> torch.nn.Module:
    """A random segment_anything Sam: 64-pixel input, 4x4 embedding grid, 32 channels."""
    torch.manual_seed(0)
    cfg = SamConfig(img_size=64, patch=16, encoder_width=32, encoder_depth=1, encoder_heads=2, prompt_dim=32,
                    decoder_depth=1, decoder_heads=2, decoder_mlp=64, window=0)  # a 4x4 grid: global attention
    return build_sam(cfg).eval()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(store, dataset): two shapes scenes (RES expressions + a narrative) recorded with a tiny LLaVA."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fit")
    dataset = ShapesGrounding("train", 2, "mix")
    model, processor = tiny_llava()
    store = Store.create(root / "store", {"model": "tiny"})
    record_dataset(load_backbone(model, processor), dataset, store, batch_size=4, progress=False)
    return store, dataset


def encoder_state(sam) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sam.image_encoder.state_dict().items()}


def test_fit_learns_reloads_and_is_seeded(recorded, tmp_path, monkeypatch):
    store, dataset = recorded
    sam = tiny_sam()
    before = encoder_state(sam)
    decoder_before = {k: v.clone() for k, v in sam.mask_decoder.state_dict().items()}
    cache = EmbeddingCache(tmp_path / "cache")

    # The LMM is never needed: any forward of a LLaVA would raise here.
    from transformers import LlavaForConditionalGeneration

    def no_lmm(*args, **kwargs):
        raise AssertionError("fit ran the LMM")

    monkeypatch.setattr(LlavaForConditionalGeneration, "forward", no_lmm)

    run = fit_grounder(store, dataset, sam, FitConfig(**CONFIG), tmp_path / "a", cache, progress=False)
    log = list(iter_log(run))
    per_epoch = [torch.tensor([r["loss"] for r in log if r["epoch"] == e]).mean() for e in (1, CONFIG["epochs"])]
    assert per_epoch[1] < per_epoch[0]
    assert {"step", "epoch", "lr", "loss", "coarse_bce", "coarse_dice", "refined_bce", "refined_dice"} <= set(log[0])
    assert len(cache.manifest) == len({f"shapes/train/{i}" for i in range(2)})  # one embedding per image

    # The caller's SAM is untouched: the encoder is frozen and the trained parts are copies.
    for k, v in encoder_state(sam).items():
        assert torch.equal(v, before[k])
    for k, v in sam.mask_decoder.state_dict().items():
        assert torch.equal(v, decoder_before[k])

    # The checkpoint holds the trainable weights only and rebuilds the same function.
    weights = load_file(str(run / "grounder.safetensors"))
    assert not any(k.startswith("refiner.sam.image_encoder.") for k in weights)
    assert any(k.startswith("refiner.sam.mask_decoder.") for k in weights) and "refiner.text.proj.weight" in weights
    spec = json.loads((run / "grounder.json").read_text())
    assert spec["config"]["epochs"] == CONFIG["epochs"] and spec["epochs_done"] == CONFIG["epochs"]
    grounder = load_grounder(run, sam)
    again = load_grounder(run / f"epoch_{CONFIG['epochs']:03d}.safetensors", sam)
    sample_id = store.manifest["sample_id"].iloc[0]
    record = store.read(sample_id)
    embedding = cache.get(next(k for k in cache.manifest["image_id"]))
    input_size = tuple(cache.meta(cache.manifest["image_id"].iloc[0])["input_size"])
    with torch.no_grad():
        coarse, refined = grounder.ground(record, embedding, input_size)
        coarse2, refined2 = again.ground(record, embedding, input_size)
    assert coarse.shape == refined.shape == (len(record.phrases), *record.image_size)
    assert torch.equal(coarse, coarse2) and torch.equal(refined, refined2)

    # Same seed, same weights; the cache is reused (nothing re-embedded).
    run_b = fit_grounder(store, dataset, sam, FitConfig(**CONFIG), tmp_path / "b", cache, progress=False)
    other = load_file(str(run_b / "grounder.safetensors"))
    assert all(torch.equal(weights[k], other[k]) for k in weights)
    with torch.no_grad():
        # the reloaded grounder is the trained one: its output matches the fresh weights' loading
        assert torch.equal(load_grounder(run_b, sam).ground(record, embedding, input_size)[0], coarse)


@pytest.mark.parametrize("kill", ["mid_epoch", "mid_checkpoint"])
def test_killed_fit_resumes_to_the_same_weights_and_log(recorded, tmp_path, monkeypatch, kill):
    store, dataset = recorded
    sam = tiny_sam()
    cache = EmbeddingCache(tmp_path / "cache")
    reference = fit_grounder(store, dataset, sam, FitConfig(**CONFIG), tmp_path / "reference", cache, progress=False)
    steps_per_epoch = json.loads((reference / "grounder.json").read_text())["steps"] // CONFIG["epochs"]

    # Kill the fit one step into its second epoch, or as it commits the second epoch's checkpoint: every
    # other file of it written (the epoch's weights and training state, the run's weights), grounder.json
    # not yet replaced.
    where, name = (fit_module, "train_step") if kill == "mid_epoch" else (fit_module.os, "replace")
    real, made = getattr(where, name), []

    def dying(*args, **kwargs):
        if kill == "mid_epoch" or Path(args[1]).name == "grounder.json":
            made.append(None)
        if len(made) == (steps_per_epoch + 2 if kill == "mid_epoch" else 2):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(where, name, dying)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit_grounder(store, dataset, sam, FitConfig(**CONFIG), run, cache, progress=False)
    monkeypatch.undo()
    assert json.loads((run / "grounder.json").read_text())["epochs_done"] == 1
    # steps past the checkpoint, which resuming drops
    assert len(list(iter_log(run))) == steps_per_epoch + (1 if kill == "mid_epoch" else steps_per_epoch)

    with pytest.raises(FileExistsError, match="--resume"):
        fit_grounder(store, dataset, sam, FitConfig(**CONFIG), run, cache, progress=False)
    with pytest.raises(ValueError, match="config"):
        fit_grounder(store, dataset, sam, FitConfig(**{**CONFIG, "lr": 1e-4}), run, cache, progress=False, resume=True)

    fit_grounder(store, dataset, sam, FitConfig(**CONFIG), run, cache, progress=False, resume=True)
    for name in ["grounder.safetensors"] + [f"epoch_{e:03d}.safetensors" for e in range(1, CONFIG["epochs"] + 1)]:
        ours, theirs = load_file(str(run / name)), load_file(str(reference / name))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    without_time = lambda r: [{k: v for k, v in line.items() if k != "elapsed"} for line in iter_log(r)]  # noqa: E731
    assert without_time(run) == without_time(reference)
    # grounder.json is the same but for the log's checksum: the log holds each step's wall time.
    without_log = lambda r: {k: v for k, v in json.loads((r / "grounder.json").read_text()).items() if k != "log_sha256"}  # noqa: E731
    assert without_log(run) == without_log(reference)
    assert sorted(p.name for p in run.glob("train_state_*")) == [f"train_state_{CONFIG['epochs']:03d}.pt"]

    # A run whose training state is gone (fitted before fits saved it) is refused, not continued inexactly.
    if kill == "mid_epoch":
        state = run / f"train_state_{CONFIG['epochs']:03d}.pt"
        state.rename(state.with_suffix(".away"))
        with pytest.raises(FileNotFoundError, match="new folder"):
            fit_grounder(store, dataset, sam, FitConfig(**CONFIG), run, cache, progress=False, resume=True)
        state.with_suffix(".away").rename(state)

    # Resuming a finished fit changes nothing.
    before = load_file(str(run / "grounder.safetensors"))
    fit_grounder(store, dataset, sam, FitConfig(**CONFIG), run, cache, progress=False, resume=True)
    after = load_file(str(run / "grounder.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before) and len(without_time(run)) == len(without_time(reference))


def test_coarse_only_fit_needs_no_sam(recorded, tmp_path):
    store, dataset = recorded
    config = FitConfig(**{**CONFIG, "epochs": 1}, use_refiner=False, maps="fused")
    run = fit_grounder(store, dataset, None, config, tmp_path / "c", progress=False)
    grounder = load_grounder(run)
    record = store.read(store.manifest["sample_id"].iloc[0])
    coarse, refined = grounder.ground(record)
    assert refined is None and coarse.shape == (len(record.phrases), *record.image_size)
    assert not (tmp_path / "c" / "sam_embeddings").exists()


def test_loss_and_schedule():
    target = torch.zeros(2, 4, 4)
    target[0, :2] = 1
    logits = (target * 2 - 1) * 50  # confidently right
    bce, dice = mask_loss(logits, target)
    assert bce.max() < 1e-6 and dice.abs().max() < 1e-6  # the empty mask scores 0 thanks to eps 1
    bce, dice = mask_loss(-logits, target)
    assert bce[0] == pytest.approx(50, rel=1e-3) and dice[0] == pytest.approx(1 - 1 / 17, rel=1e-4)
    factors = [lr_factor(s, 100, 0.03) for s in range(100)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1]) and factors[3] == 1
    assert factors[-1] < 1e-3 and all(a >= b for a, b in zip(factors[3:], factors[4:]))


def test_build_grounder_trains_the_right_parts():
    sam = tiny_sam()
    grounder = build_grounder(FitConfig(**CONFIG), in_channels=12, sam=sam, text_dim=64, text_layers=3)
    trainable = {n for n, p in grounder.named_parameters() if p.requires_grad}
    assert not any(n.startswith("refiner.sam.image_encoder.") for n in trainable)
    assert any(n.startswith("refiner.sam.prompt_encoder.") for n in trainable)
    assert any(n.startswith("refiner.sam.mask_decoder.") for n in trainable)
    assert any(n.startswith("decoder.") for n in trainable)
    assert grounder.refiner.sam.image_encoder is sam.image_encoder  # shared, never copied
    assert grounder.refiner.sam.mask_decoder is not sam.mask_decoder
    with pytest.raises(ValueError, match="use_refiner"):
        build_grounder(FitConfig(), in_channels=12, sam=None)


def _rank_main(rank: int, port: int, store_root: str, cache_root: str, run_dir: str) -> None:
    """One torchrun-like process: RANK / WORLD_SIZE in the environment, gloo on the CPU."""
    import os

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    config = FitConfig(**{**CONFIG, "epochs": 2, "batch_size": 2})
    cache = EmbeddingCache(cache_root, rank=rank)
    fit_grounder(Store.open(store_root), ShapesGrounding("train", 2, "png"), tiny_sam(), config, run_dir, cache, progress=False)
    import torch.distributed as dist

    dist.destroy_process_group()


def test_two_processes_match_one_with_the_same_global_batch(recorded, tmp_path):
    import socket

    import torch.multiprocessing as mp

    store, _ = recorded
    dataset = ShapesGrounding("train", 2, "png")  # 2 narratives, 8 phrases: 2 steps of 4 phrases per epoch
    cache = EmbeddingCache(tmp_path / "cache")
    single = fit_grounder(store, dataset, tiny_sam(), FitConfig(**{**CONFIG, "epochs": 2, "batch_size": 4}),
                          tmp_path / "one", cache, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children reuse the imported modules (spawn would import torch and transformers again)
    mp.start_processes(_rank_main, args=(port, str(store.root), str(tmp_path / "cache"), str(tmp_path / "two")), nprocs=2,
                       start_method="fork")
    # DDP averages the two ranks' gradients of 2 phrases each: the same step as one process on 4 phrases.
    one, two = load_file(str(single / "grounder.safetensors")), load_file(str(tmp_path / "two" / "grounder.safetensors"))
    assert json.loads((tmp_path / "two" / "grounder.json").read_text())["world_size"] == 2
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4)
