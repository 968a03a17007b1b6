"""Train the F-LMM heads (U-Net mask decoder + SAM refiner) from a store, never running the LMM (docs/design.md steps 4-6).

    store = Store.open("runs/store")                       # recorded once with record_dataset
    cache = EmbeddingCache("runs/sam_cache")               # filled here (EmbeddingCache.fill) where it lacks images
    run = fit(store, open_dataset("shapes:train:2000:mix"), sam, FitConfig(epochs=8), "runs/fit", cache)
    grounder = load_grounder(run, sam)                     # decoder.load_grounder: rebuilt from run/grounder.json

What one step reads: for `batch_size` phrases, their attention maps and hidden states (Store.read), the
frozen SAM image embedding of their images (EmbeddingCache.get) and their ground-truth masks
(GroundingSample.masks). What it trains: the U-Net, and SAM's prompt encoder, mask decoder and the text
projection; SAM's image encoder is frozen and its embeddings are cached, so it never runs in the loop.

Files written to `run_dir`:
    grounder.json                   FitConfig + the shapes needed to rebuild the Grounder (decoder.grounder)
    grounder.safetensors            trainable weights after the last epoch (no SAM image encoder)
    epoch_001.safetensors ...       the same after each epoch
    train_state_NNN.pt              AdamW and schedule state after the last finished epoch, NNN (fit(resume=True))
    log.jsonl                       one JSON line per step: step, epoch, lr, loss and its parts, grad_norm,
                                    elapsed (seconds since the loop started)
Each weights file carries the sha256 of its tensors in its metadata, and grounder.json the sha256 of the
training state and of the log it commits: a damaged or missing file is named when it is read, with the way out.

Multi-GPU / multi-process: under torchrun (RANK / WORLD_SIZE set) the Grounder is wrapped in
DistributedDataParallel and each rank takes every world_size-th batch of the epoch's order (padded by
wrapping around, as DistributedSampler does), so `batch_size` is per process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from segment_anything.modeling import Sam
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .cache import EmbeddingCache
from .data.samples import GroundingDataset
from .decoder.grounder import (CHECKSUM_KEY, CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, Grounder, GrounderConfig, GroundingInput,
                               build_grounder, load_trainable, read_spec, record_channels, sam_shapes, tensor_digest)
from .decoder.objective import lr_factor, mask_loss
from .decoder.refiner import SamRefiner
from .ranks import join
from .store import Store

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
STATE_FILE = "train_state_{:03d}.pt"


@dataclass
class FitConfig(GrounderConfig):
    """Everything that decides a fit: the grounder's architecture (`GrounderConfig`'s fields) and the training
    recipe. Defaults are the paper's recipe (docs/design.md steps 4-6).

    Loss, on the coarse (U-Net) and on the refined (SAM) mask each: bce_weight * BCE(sigmoid, mean over
    pixels) + dice_weight * naive Dice (eps dice_eps), both at the original image size.
    Optimiser: AdamW(lr, betas, weight_decay), gradients clipped to grad_clip (L2 norm); the learning
    rate rises linearly over the first warmup_ratio of the steps, then follows a cosine down to 0.
    batch_size: phrases per optimiser step (per process). The epoch's order shuffles samples and keeps
        each sample's phrases together, as the reference batches all phrases of one text.
    seed: the grounder's initialisation and the epochs' order.
    device: None picks cuda (this process's LOCAL_RANK under torchrun) when available, else cpu.
    """

    epochs: int = 8
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    warmup_ratio: float = 0.03
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    dice_eps: float = 1.0
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.betas = tuple(self.betas)  # JSON gives a list back


@dataclass
class TrainingPhrases:
    """The training set: samples in both the store and the dataset, in sample-id order."""

    sample_ids: list[str]
    dataset_index: dict[str, int]
    n_phrases: dict[str, int]
    image_keys: dict[str, str] = field(default_factory=dict)


def training_set(store: Store, dataset: GroundingDataset) -> TrainingPhrases:
    """The phrases a fit trains on: those of the samples both in ``store`` and in ``dataset``."""
    counts = store.manifest.groupby("sample_id", sort=True).size()
    index = {dataset[i].sample_id: i for i in range(len(dataset))}  # unchecked samples: cheap, nothing read
    ids = [s for s in counts.index if s in index]
    if len(ids) < len(counts):
        log.warning("fit: %d stored samples are not in the dataset and are left out", len(counts) - len(ids))
    if not ids:
        raise ValueError(f"No sample of the store at {store.root} is in the dataset; record this dataset first.")
    if len(ids) < len(index):
        log.info("fit: %d dataset samples are not in the store (bad or not recorded) and are left out", len(index) - len(ids))
    keys = {s: dataset[index[s]].image_key for s in ids}
    return TrainingPhrases(ids, index, {s: int(counts[s]) for s in ids}, keys)


def epoch_batches(phrases: TrainingPhrases, epoch: int, config: FitConfig, rank: int, world: int) -> list[list[tuple[str, int]]]:
    """This rank's batches of (sample_id, phrase_index) for `epoch`: samples shuffled (seed + epoch), phrases
    of a sample kept together, cut into batches of batch_size, every world-th batch from `rank` on."""
    generator = torch.Generator().manual_seed(config.seed + epoch)
    order = [phrases.sample_ids[i] for i in torch.randperm(len(phrases.sample_ids), generator=generator).tolist()]
    stream = [(s, p) for s in order for p in range(phrases.n_phrases[s])]
    batches = [stream[i : i + config.batch_size] for i in range(0, len(stream), config.batch_size)]
    per_rank = math.ceil(len(batches) / world)
    batches += batches[: per_rank * world - len(batches)]  # wrap around so every rank takes as many steps
    return batches[rank::world]


class PhraseReader:
    """Reads a batch's inputs from the store, the embedding cache and the dataset, one record per sample.

    The last sample read is kept, because an epoch's batches cut a sample's phrases across two batches.
    """

    def __init__(self, grounder: Grounder, store: Store, dataset: GroundingDataset, phrases: TrainingPhrases,
                 cache: EmbeddingCache | None) -> None:
        self.grounder, self.store, self.dataset, self.phrases, self.cache = grounder, store, dataset, phrases, cache
        self._last: tuple[str, torch.Tensor, list[torch.Tensor], torch.Tensor, tuple[int, int]] | None = None
        self._input_sizes: dict[str, tuple[int, int]] = {}

    def sample(self, sample_id: str) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, tuple[int, int]]:
        """(maps (phrase, C, y, x), hidden per phrase, masks (phrase, H, W) float, image size (H, W))."""
        if self._last is None or self._last[0] != sample_id:
            record = self.store.read(sample_id)
            masks = torch.from_numpy(self.dataset[self.phrases.dataset_index[sample_id]].masks()).float()
            self._last = (sample_id, self.grounder.channels(record), record.hidden, masks, tuple(record.image_size))
        return self._last[1:]

    def embedding(self, sample_id: str) -> tuple[torch.Tensor, tuple[int, int]]:
        key = self.phrases.image_keys[sample_id]
        if key not in self._input_sizes:
            self._input_sizes[key] = tuple(self.cache.meta(key)["input_size"])
        return self.cache.get(key).float(), self._input_sizes[key]

    def batch(self, batch: list[tuple[str, int]]) -> tuple[list[GroundingInput], list[torch.Tensor]]:
        """The batch grouped by sample: Grounder inputs and the (n, H, W) float targets of each group."""
        groups: dict[str, list[int]] = {}
        for sample_id, p in batch:
            groups.setdefault(sample_id, []).append(p)
        inputs, targets = [], []
        use_refiner = self.grounder.refiner is not None
        use_text = use_refiner and self.grounder.refiner.use_text
        for sample_id, idx in groups.items():
            maps, hidden, masks, size = self.sample(sample_id)
            embedding, input_size = self.embedding(sample_id) if use_refiner else (None, None)
            text = [hidden[p] for p in idx] if use_text else None
            inputs.append(GroundingInput(maps[idx], size, text, embedding, input_size))
            targets.append(masks[idx])
        return inputs, targets


def _device(config: FitConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _shapes(store: Store, sample_id: str, config: FitConfig) -> dict[str, Any]:
    """What build_grounder needs besides the config, read off one stored record (and checked)."""
    record = store.read(sample_id)
    pooling = record.meta.get("pooling", config.pooling)
    if pooling != config.pooling:
        raise ValueError(f"The store was recorded with pooling {pooling!r} but config.pooling is {config.pooling!r}.")
    # Stacked channels follow the family's view kinds (stores recorded before records carried them: the kinds
    # the store holds), so that a one-tile image stacks like a tiled one.
    kinds = (record.meta.get("view_kinds") or store.map_kinds()) if config.maps == "stacked" else None
    shapes: dict[str, Any] = {"in_channels": int(record_channels(record, config.maps, kinds).shape[1]),
                              "text_dim": None, "text_layers": None, "kinds": kinds}
    if config.use_refiner and config.use_text:
        if not record.hidden:
            raise ValueError(f"The store at {store.root} holds no hidden states, needed for text prompts: "
                             "record with hidden_states=True, or fit with use_text=False.")
        shapes["text_layers"], shapes["text_dim"] = (int(n) for n in record.hidden[0].shape[1:])
    return shapes


def _fill_cache(sam: Sam, dataset: GroundingDataset, cache: EmbeddingCache, phrases: TrainingPhrases, rank: int, world: int,
                progress: bool) -> None:
    """Embed the images the cache lacks (rank 0 only; the other ranks wait and re-read the cache)."""
    missing = {k for k in phrases.image_keys.values() if k not in cache}
    if missing and rank == 0:
        log.info("fit: embedding %d images with the frozen SAM image encoder", len(missing))
        cache.fill(SamRefiner(sam, use_text=False), dataset, progress=progress)
    if world > 1:
        dist.barrier()
        cache.refresh()
    still = [k for k in phrases.image_keys.values() if k not in cache]
    if still:
        raise ValueError(f"{len(still)} training images have no SAM embedding (e.g. {still[0]!r}); "
                         "EmbeddingCache.fill skips bad samples: check the dataset's bad-sample log.")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={**metadata, CHECKSUM_KEY: tensor_digest(tensors)})
    os.replace(tmp, path)


def fit(
    store: Store,
    dataset: GroundingDataset,
    sam: Sam | None,
    config: FitConfig | None = None,
    run_dir: str | Path = "runs/fit",
    cache: EmbeddingCache | None = None,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Train a Grounder on the samples of `dataset` that `store` holds; returns `run_dir`.

    sam: the SAM whose prompt encoder and mask decoder are trained (as copies: their weights in `sam` stay
        as they are; its image encoder is shared and set to requires_grad False) and whose image encoder
        fills the cache; None only with config.use_refiner False.
    cache: SAM image embeddings; default `run_dir/sam_embeddings`. Images it lacks are embedded first.
    Reads only the store, the cache and the dataset's masks: the LMM is not needed. The same config
    (seed) on the same data gives the same weights.
    resume: continue the fit in `run_dir` from its last finished epoch (a killed fit loses at most one
        epoch); the run must have been started with the same config on the same phrases, and ends with the
        same weights and log as an uninterrupted fit. Without it, a `run_dir` that holds a fit is an error.
    """
    config = config or FitConfig()
    run_dir = Path(run_dir)
    if not resume and (run_dir / CONFIG_FILE).exists():
        raise FileExistsError(f"{run_dir} already holds a fit; resume it (--resume) or fit into a new folder.")
    rank, world = join()
    device = _device(config)
    phrases = training_set(store, dataset)
    shapes = _shapes(store, phrases.sample_ids[0], config)
    if config.use_refiner:
        cache = cache if cache is not None else EmbeddingCache(run_dir / "sam_embeddings", rank=rank)
        _fill_cache(sam, dataset, cache, phrases, rank, world, progress)

    grounder = build_grounder(config, shapes["in_channels"], sam, shapes["text_dim"], shapes["text_layers"],
                              shapes["kinds"], seed=config.seed).to(device)
    grounder.train()
    trainable = [p for p in grounder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    steps_per_epoch = len(epoch_batches(phrases, 0, config, rank, world))
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, config.warmup_ratio))
    reader = PhraseReader(grounder, store, dataset, phrases, cache)

    spec = {"format": FORMAT_VERSION, "config": asdict(config), **shapes,
            "sam": sam_shapes(sam) if config.use_refiner else None,
            "store": str(store.root), "store_config": store.config,
            "samples": len(phrases.sample_ids), "phrases": sum(phrases.n_phrases.values()),
            "world_size": world, "steps": total, "epochs_done": 0}
    done = _resume(run_dir, spec, grounder, optimizer, scheduler) if resume else 0
    model: nn.Module = grounder
    if world > 1:
        # Prompts that are switched off (points, no-mask embedding, ...) leave SAM parameters unused.
        model = DistributedDataParallel(grounder, find_unused_parameters=True)
    step = done * steps_per_epoch
    elapsed = _keep_log(run_dir, step, spec.pop("log_sha256", None)) if rank == 0 else 0.0
    log.info("fit: %d phrases of %d samples, %d steps on %s x %d (from epoch %d)",
             spec["phrases"], spec["samples"], total, device, world, done)

    start = time.perf_counter() - elapsed
    bar = tqdm(total=total, initial=step, disable=not progress or rank != 0, desc="fit", unit="step")
    for epoch in range(done, config.epochs):
        for batch in epoch_batches(phrases, epoch, config, rank, world):
            inputs, targets = reader.batch(batch)
            line = train_step(model, optimizer, scheduler, trainable, inputs, targets, config)
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{line['loss']:.4f}")
            if rank == 0:
                line = {"step": step, "epoch": epoch + 1, **line, "elapsed": time.perf_counter() - start}
                with open(run_dir / LOG_FILE, "a") as f:
                    f.write(json.dumps(line) + "\n")
        if rank == 0:
            spec["epochs_done"] = epoch + 1
            _write_checkpoint(grounder, optimizer, scheduler, spec, run_dir, epoch + 1)
    bar.close()
    if world > 1:
        dist.barrier()
    return run_dir


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
               trainable: list[nn.Parameter], inputs: list[GroundingInput], targets: list[torch.Tensor],
               config: FitConfig) -> dict[str, float]:
    """One optimiser step on one batch (Grounder inputs and (n, H, W) targets per image).

    Returns the log line's numbers: lr (the rate this step used), loss and its parts, grad_norm (before clipping).
    """
    device = next(iter(trainable)).device
    parts = _loss_parts(model(inputs), targets, config, device)
    loss = (config.bce_weight * (parts["coarse_bce"] + parts.get("refined_bce", 0))
            + config.dice_weight * (parts["coarse_dice"] + parts.get("refined_dice", 0)))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    return {"lr": lr, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}, "grad_norm": grad_norm.item()}


def _loss_parts(outputs: list[tuple[torch.Tensor, torch.Tensor | None]], targets: list[torch.Tensor], config: FitConfig,
                device: torch.device) -> dict[str, torch.Tensor]:
    """Mean over the batch's phrases of BCE and Dice, for the coarse and (if any) the refined masks."""
    sums: dict[str, list[torch.Tensor]] = {}
    for (coarse, refined), target in zip(outputs, targets):
        target = target.to(device)
        for name, logits in (("coarse", coarse), ("refined", refined)):
            if logits is None:
                continue
            bce, dice = mask_loss(logits, target, config.dice_eps)
            sums.setdefault(f"{name}_bce", []).append(bce)
            sums.setdefault(f"{name}_dice", []).append(dice)
    return {k: torch.cat(v).mean() for k, v in sums.items()}


def _write_checkpoint(grounder: Grounder, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                      spec: dict[str, Any], run_dir: Path, epoch: int) -> None:
    """The epoch's weights and training state, the run's weights, then grounder.json: replacing it commits
    the epoch, and only then does the previous epoch's training state go. A fit killed anywhere in here
    resumes from the epoch its grounder.json names, whose files are complete."""
    state = grounder.trainable_state()
    meta = {"flmm_probe.grounder": json.dumps({"epoch": epoch})}
    _atomic_save(state, run_dir / f"epoch_{epoch:03d}.safetensors", meta)
    tmp = run_dir / (STATE_FILE.format(epoch) + ".tmp")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp)
    os.replace(tmp, run_dir / STATE_FILE.format(epoch))
    spec["train_state_sha256"] = _file_digest(run_dir / STATE_FILE.format(epoch))
    spec["log_sha256"] = _file_digest(run_dir / LOG_FILE)
    _atomic_save(state, run_dir / WEIGHTS_FILE, meta)
    tmp = run_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
    os.replace(tmp, run_dir / CONFIG_FILE)
    (run_dir / STATE_FILE.format(epoch - 1)).unlink(missing_ok=True)
    log.info("fit: epoch %d checkpoint in %s", epoch, run_dir)


def _resume(run_dir: Path, spec: dict[str, Any], grounder: Grounder, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler) -> int:
    """Load the last finished epoch of the fit in `run_dir` into the fresh grounder, optimizer and schedule;
    returns the number of epochs done (0 if the fit had not finished one)."""
    if not (run_dir / CONFIG_FILE).exists():
        return 0
    saved = read_spec(run_dir / CONFIG_FILE)
    differs = sorted(k for k in set(spec) | set(saved) if k not in ("epochs_done", "train_state_sha256", "log_sha256")
                     and _comparable(spec.get(k), k) != _comparable(saved.get(k), k))
    if differs:
        raise ValueError(f"Cannot resume {run_dir}: it was fitted with other {', '.join(differs)} "
                         f"({', '.join(f'{k}={saved.get(k)!r}' for k in differs)}). Pass the options it was started "
                         "with, or fit into a new folder.")
    done = saved["epochs_done"]
    state_path = run_dir / STATE_FILE.format(done)
    if not state_path.exists():
        raise FileNotFoundError(f"{state_path} is missing: without the optimizer state of epoch {done} the fit cannot be "
                                f"continued exactly. Its weights ({WEIGHTS_FILE}) still load; to train further, fit into a new folder.")
    if "train_state_sha256" in saved and _file_digest(state_path) != saved["train_state_sha256"]:
        raise ValueError(f"{state_path} is damaged (its sha256 is not the one {CONFIG_FILE} recorded): the fit cannot be "
                         f"continued exactly. Its weights ({WEIGHTS_FILE}) still load; to train further, fit into a new folder.")
    state = torch.load(state_path, weights_only=True)
    load_trainable(grounder, run_dir / f"epoch_{done:03d}.safetensors")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    spec["epochs_done"] = done
    if "log_sha256" in saved:
        spec["log_sha256"] = saved["log_sha256"]
    log.info("fit: resuming %s after epoch %d", run_dir, done)
    return done


def _comparable(value: Any, key: str) -> Any:
    """A spec value as JSON gives it back, without the config's device (a fit may resume on another)."""
    value = json.loads(json.dumps(value, sort_keys=True, default=str))
    if key == "config" and value is not None:
        value.pop("device", None)
    return value


def _keep_log(run_dir: Path, steps: int, sha256: str | None = None) -> float:
    """Cut log.jsonl to its first `steps` lines (a killed fit logged steps past its checkpoint; a new fit
    keeps none), checked against the ``sha256`` its checkpoint recorded of them; returns the elapsed seconds
    of the last line kept."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOG_FILE
    damaged = f"{path} is damaged ({{}}): the log cannot be continued; fit into a new folder."
    try:
        lines = path.read_text().splitlines(keepends=True)[:steps] if steps else []
    except UnicodeDecodeError as err:
        raise ValueError(damaged.format(err)) from err
    if len(lines) != steps:
        raise ValueError(f"{path} has {len(lines)} steps, fewer than the {steps} its checkpoint was saved after: "
                         "the log cannot be continued; fit into a new folder.")
    if sha256 is not None and hashlib.sha256("".join(lines).encode()).hexdigest() != sha256:
        raise ValueError(damaged.format("its steps are not the ones its checkpoint recorded"))
    try:
        elapsed = [json.loads(line)["elapsed"] for line in lines][-1] if lines else 0.0
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(damaged.format(err)) from err
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)
    return elapsed


def iter_log(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The training log of a run, one dict per step (step, epoch, lr, loss, its parts, grad_norm, elapsed)."""
    with open(Path(run_dir) / LOG_FILE) as f:
        for line in f:
            yield json.loads(line)
