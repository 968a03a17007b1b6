"""Train the F-LMM heads (U-Net mask decoder + SAM refiner) from a store, never running the LMM (docs/design.md steps 4-6).

    store = Store.open("runs/store")                       # recorded once with record_dataset
    cache = EmbeddingCache("runs/sam_cache")               # filled here with embed_images if it lacks images
    run = fit(store, open_dataset("shapes:train:2000:mix"), sam, FitConfig(epochs=8), "runs/fit", cache)
    grounder = load_grounder(run, sam)                     # rebuilt from run/grounder.json in one call

What one step reads: for `batch_size` phrases, their attention maps and hidden states (Store.read), the
frozen SAM image embedding of their images (EmbeddingCache.get) and their ground-truth masks
(GroundingSample.masks). What it trains: the U-Net, and SAM's prompt encoder, mask decoder and the text
projection; SAM's image encoder is frozen and its embeddings are cached, so it never runs in the loop.

Files written to `run_dir`:
    grounder.json                   FitConfig + the shapes needed to rebuild the Grounder (load_grounder)
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

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from segment_anything.modeling import Sam
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .cache import EmbeddingCache
from .data.samples import GroundingDataset
from .decoder.refiner import SamRefiner
from .decoder.unet import MaskDecoder, UNetConfig, resize_logits
from .record import AttentionRecord
from .recording import embed_images, image_key
from .store import Store

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAP_KINDS = ("stacked", "fused")
CONFIG_FILE, WEIGHTS_FILE, LOG_FILE = "grounder.json", "grounder.safetensors", "log.jsonl"
CHECKSUM_KEY = "flmm_probe.sha256"  # safetensors metadata: the sha256 of the file's tensors (tensor_digest)
STATE_FILE = "train_state_{:03d}.pt"
_FROZEN_PREFIX = "refiner.sam.image_encoder."  # never saved: it is the user's SAM, unchanged


@dataclass
class FitConfig:
    """Everything that decides a fit. Defaults are the paper's recipe (docs/design.md steps 4-6).

    Loss, on the coarse (U-Net) and on the refined (SAM) mask each: bce_weight * BCE(sigmoid, mean over
    pixels) + dice_weight * naive Dice (eps dice_eps), both at the original image size.
    Optimiser: AdamW(lr, betas, weight_decay), gradients clipped to grad_clip (L2 norm); the learning
    rate rises linearly over the first warmup_ratio of the steps, then follows a cosine down to 0.
    batch_size: phrases per optimiser step (per process). The epoch's order shuffles samples and keeps
        each sample's phrases together, as the reference batches all phrases of one text.
    maps: "stacked" (every view kind's (layer, head) maps as channels, AttentionRecord.stacked) or
        "fused" (kinds averaged first, AttentionRecord.fused: layer * head channels).
    pooling: how the store merged a phrase's tokens ("mean" | "max" | "last"); checked against the store, and used
        by `segment` to record new images the same way.
    use_refiner: train the SAM refiner (else only the U-Net; refined masks are then None).
    use_text, use_box, use_mask: the refiner's prompts (docs/design.md step 5).
    base_channels, stages, convs_per_stage, long_side: the U-Net (decoder.unet.UNetConfig).
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
    maps: str = "stacked"
    pooling: str = "mean"
    use_refiner: bool = True
    use_text: bool = True
    use_box: bool = True
    use_mask: bool = True
    base_channels: int = 64
    stages: int = 4
    convs_per_stage: int = 2
    long_side: int = 64
    log_maps: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        if self.maps not in MAP_KINDS:
            raise ValueError(f"Unknown maps {self.maps!r}; choose one of {MAP_KINDS}.")
        self.betas = tuple(self.betas)  # JSON gives a list back

    def unet(self, in_channels: int) -> UNetConfig:
        return UNetConfig(in_channels, self.base_channels, self.stages, self.convs_per_stage, self.long_side,
                          self.log_maps)


@dataclass
class GroundingInput:
    """One image and n of its phrases, what `Grounder.forward` takes.

    maps: (n, C, y, x) attention maps as channels over the whole original image (Grounder.channels).
    image_size: (H, W) of the original image, pixels.
    hidden: n tensors (tokens, layers, dim), the phrases' hidden states; None without text prompts.
    embedding: (C', h', w') frozen SAM image embedding (SamRefiner.embed); None without the refiner.
    input_size: (h, w) SAM input frame of the image, as SamRefiner.embed returns it.
    """

    maps: torch.Tensor
    image_size: tuple[int, int]
    hidden: list[torch.Tensor] | None = None
    embedding: torch.Tensor | None = None
    input_size: tuple[int, int] | None = None


class Grounder(nn.Module):
    """Attention maps (+ SAM image embedding and phrase hidden states) -> mask logits.

    decoder: the U-Net (trained). refiner: a SamRefiner (prompt encoder, mask decoder and text
    projection trained, image encoder frozen), or None for coarse masks only.
    maps, pooling: as in FitConfig; they say how records become decoder inputs.
    """

    def __init__(self, decoder: MaskDecoder, refiner: SamRefiner | None, maps: str = "stacked", pooling: str = "mean",
                 kinds: Sequence[str] | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        self.refiner = refiner
        self.maps, self.pooling, self.kinds = maps, pooling, kinds

    @property
    def device(self) -> torch.device:
        return self.decoder.head.weight.device

    def channels(self, record: AttentionRecord) -> torch.Tensor:
        """(phrase, C, y, x) float32 decoder input of a record (see `record_channels`)."""
        return record_channels(record, self.maps, self.kinds)

    def coarse(self, maps: torch.Tensor) -> torch.Tensor:
        """(n, C, y, x) maps -> (n, Y', X') coarse logits at the decoder's map grid (covering the whole image)."""
        return self.decoder(maps.to(self.device))

    def forward(self, images: list[GroundingInput]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per image: (coarse (n, H, W), refined (n, H, W) or None) logits at the original image size.

        All images go through one call so that DistributedDataParallel sees one forward per step.
        """
        out = []
        for item in images:
            grid = self.coarse(item.maps)  # (n, Y', X')
            coarse = resize_logits(grid, item.image_size)  # (n, H, W)
            refined = None
            if self.refiner is not None:
                if item.embedding is None or item.input_size is None:
                    raise ValueError("This Grounder has a SAM refiner: pass the image's embedding and input_size.")
                refined = self.refiner.forward_embedding(
                    item.embedding, item.input_size, item.image_size, grid, item.hidden if self.refiner.use_text else None
                )
            out.append((coarse, refined))
        return out

    def ground(
        self,
        record: AttentionRecord,
        embedding: torch.Tensor | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A record (all its phrases) + its image's SAM embedding (C', h', w') -> (coarse, refined) logits,
        each (phrase, H, W) at the original image size; refined is None without a refiner."""
        hidden = record.hidden if self.refiner is not None and self.refiner.use_text else None
        if hidden is not None and not hidden:
            raise ValueError("The refiner uses text prompts but the record has no hidden states; record with hidden_states=True.")
        return self([GroundingInput(self.channels(record), tuple(record.image_size), hidden, embedding, input_size)])[0]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint holds: everything but SAM's frozen image encoder."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith(_FROZEN_PREFIX)}


def record_channels(record: AttentionRecord, maps: str = "stacked", kinds: Sequence[str] | None = None) -> torch.Tensor:
    """(phrase, C, y, x) float32: a record's maps as decoder channels, "stacked" (kind * layer * head, for each of
    ``kinds`` in that order, zeros for a kind the record lacks; default the record's own) or "fused" (layer *
    head, kinds averaged), at the finest kind's grid."""
    if maps == "stacked":
        return record.stacked(kinds=kinds)
    if maps == "fused":
        return record.fused().flatten(1, 2)
    raise ValueError(f"Unknown maps {maps!r}; choose one of {MAP_KINDS}.")


def _own_sam(sam: Sam) -> Sam:
    """A Sam that shares `sam`'s frozen image encoder but trains its own copies of the prompt encoder and
    mask decoder, so that fitting never changes the caller's SAM and two fits start from the same weights."""
    own = Sam(
        image_encoder=sam.image_encoder,
        prompt_encoder=copy.deepcopy(sam.prompt_encoder),
        mask_decoder=copy.deepcopy(sam.mask_decoder),
        pixel_mean=sam.pixel_mean.flatten().tolist(),
        pixel_std=sam.pixel_std.flatten().tolist(),
    )
    own.image_format = sam.image_format
    return own


def build_grounder(config: FitConfig, in_channels: int, sam: Sam | None, text_dim: int | None = None,
                   text_layers: int | None = None, kinds: Sequence[str] | None = None) -> Grounder:
    """A freshly initialised Grounder (seeded by config.seed) for maps with `in_channels` channels.

    text_dim, text_layers: the LMM's hidden size and hidden-state layers per token (needed with use_text).
    kinds: the stacked maps' view kinds in channel order (``record_channels``).
    """
    torch.manual_seed(config.seed)
    decoder = MaskDecoder(config.unet(in_channels))
    refiner = None
    if config.use_refiner:
        if sam is None:
            raise ValueError("config.use_refiner is set: pass the SAM whose prompt encoder and mask decoder to train.")
        refiner = SamRefiner(_own_sam(sam), config.use_text, config.use_box, config.use_mask, text_dim, text_layers)
    return Grounder(decoder, refiner, config.maps, config.pooling, kinds)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, H, W) logits and {0, 1} targets -> per-mask (BCE mean over pixels (n,), naive Dice loss (n,)).

    Naive Dice (mmdet's naive_dice): 1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps), p = sigmoid(logits).
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    p, t = logits.sigmoid().flatten(1), target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return bce, dice


def lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    """Multiplier of the base learning rate at `step` (0-based) of `total`: linear warmup, then cosine to 0."""
    warmup = int(warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class _Phrases:
    """The training set: samples in both the store and the dataset, in sample-id order."""

    sample_ids: list[str]
    dataset_index: dict[str, int]
    n_phrases: dict[str, int]
    image_keys: dict[str, str] = field(default_factory=dict)


def _training_set(store: Store, dataset: GroundingDataset) -> _Phrases:
    counts = store.manifest.groupby("sample_id", sort=True).size()
    index = {dataset[i].sample_id: i for i in range(len(dataset))}  # unchecked samples: cheap, nothing read
    ids = [s for s in counts.index if s in index]
    if len(ids) < len(counts):
        log.warning("fit: %d stored samples are not in the dataset and are left out", len(counts) - len(ids))
    if not ids:
        raise ValueError(f"No sample of the store at {store.root} is in the dataset; record this dataset first.")
    if len(ids) < len(index):
        log.info("fit: %d dataset samples are not in the store (bad or not recorded) and are left out", len(index) - len(ids))
    keys = {s: image_key(dataset[index[s]]) for s in ids}
    return _Phrases(ids, index, {s: int(counts[s]) for s in ids}, keys)


def _epoch_batches(phrases: _Phrases, epoch: int, config: FitConfig, rank: int, world: int) -> list[list[tuple[str, int]]]:
    """This rank's batches of (sample_id, phrase_index) for `epoch`: samples shuffled (seed + epoch), phrases
    of a sample kept together, cut into batches of batch_size, every world-th batch from `rank` on."""
    generator = torch.Generator().manual_seed(config.seed + epoch)
    order = [phrases.sample_ids[i] for i in torch.randperm(len(phrases.sample_ids), generator=generator).tolist()]
    stream = [(s, p) for s in order for p in range(phrases.n_phrases[s])]
    batches = [stream[i : i + config.batch_size] for i in range(0, len(stream), config.batch_size)]
    per_rank = math.ceil(len(batches) / world)
    batches += batches[: per_rank * world - len(batches)]  # wrap around so every rank takes as many steps
    return batches[rank::world]


class _Reader:
    """Reads a batch's inputs from the store, the embedding cache and the dataset, one record per sample.

    The last sample read is kept, because an epoch's batches cut a sample's phrases across two batches.
    """

    def __init__(self, grounder: Grounder, store: Store, dataset: GroundingDataset, phrases: _Phrases,
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


def _distributed() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; joins the process group when world_size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world


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
    # Stacked channels follow the store's view kinds, so that a one-tile image stacks like a tiled one.
    kinds = store.map_kinds() if config.maps == "stacked" else None
    shapes: dict[str, Any] = {"in_channels": int(record_channels(record, config.maps, kinds).shape[1]),
                              "text_dim": None, "text_layers": None, "kinds": kinds}
    if config.use_refiner and config.use_text:
        if not record.hidden:
            raise ValueError(f"The store at {store.root} holds no hidden states, needed for text prompts: "
                             "record with hidden_states=True, or fit with use_text=False.")
        shapes["text_layers"], shapes["text_dim"] = (int(n) for n in record.hidden[0].shape[1:])
    return shapes


def _fill_cache(sam: Sam, dataset: GroundingDataset, cache: EmbeddingCache, phrases: _Phrases, rank: int, world: int,
                progress: bool) -> None:
    """Embed the images the cache lacks (rank 0 only; the other ranks wait and re-read the cache)."""
    missing = {k for k in phrases.image_keys.values() if k not in cache}
    if missing and rank == 0:
        log.info("fit: embedding %d images with the frozen SAM image encoder", len(missing))
        embed_images(SamRefiner(sam, use_text=False), dataset, cache, progress=progress)
    if world > 1:
        dist.barrier()
        cache.refresh()
    still = [k for k in phrases.image_keys.values() if k not in cache]
    if still:
        raise ValueError(f"{len(still)} training images have no SAM embedding (e.g. {still[0]!r}); "
                         "embed_images skips bad samples: check the dataset's bad-sample log.")


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    rank, world = _distributed()
    device = _device(config)
    phrases = _training_set(store, dataset)
    shapes = _shapes(store, phrases.sample_ids[0], config)
    if config.use_refiner:
        cache = cache if cache is not None else EmbeddingCache(run_dir / "sam_embeddings", rank=rank)
        _fill_cache(sam, dataset, cache, phrases, rank, world, progress)

    grounder = build_grounder(config, shapes["in_channels"], sam, shapes["text_dim"], shapes["text_layers"],
                              shapes["kinds"]).to(device)
    grounder.train()
    trainable = [p for p in grounder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    steps_per_epoch = len(_epoch_batches(phrases, 0, config, rank, world))
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, config.warmup_ratio))
    reader = _Reader(grounder, store, dataset, phrases, cache)

    spec = {"format": FORMAT_VERSION, "config": asdict(config), **shapes,
            "sam": _sam_shapes(sam) if config.use_refiner else None,
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
        for batch in _epoch_batches(phrases, epoch, config, rank, world):
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


def _sam_shapes(sam: Sam) -> dict[str, Any]:
    return {"img_size": sam.image_encoder.img_size, "embed_dim": sam.prompt_encoder.embed_dim,
            "mask_input_size": list(sam.prompt_encoder.mask_input_size)}


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
    saved = _read_spec(run_dir / CONFIG_FILE)
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
    _load_trainable(grounder, run_dir / f"epoch_{done:03d}.safetensors")
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


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({err}): the run cannot be rebuilt or resumed without it; refit into a new "
                         "folder.") from err


def _load_trainable(grounder: Grounder, weights: Path) -> None:
    """Load a checkpoint's weights (all but SAM's frozen image encoder) into `grounder`."""
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the fit did not finish an epoch; rerun it with --resume.")
    way_out = "Load one of the epoch checkpoints next to it (epoch_NNN.safetensors), or refit."
    try:
        state = load_file(str(weights))
        with safe_open(str(weights), "pt") as f:
            expected = (f.metadata() or {}).get(CHECKSUM_KEY)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} cannot be read ({err}): the file is damaged. {way_out}") from err
    if expected is not None and tensor_digest(state) != expected:
        raise ValueError(f"{weights} is damaged: its tensors' sha256 is not the one saved with them. {way_out}")
    missing, unexpected = grounder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(_FROZEN_PREFIX)]
    if missing or unexpected:
        raise ValueError(f"{weights} does not match its {CONFIG_FILE}: missing {missing[:5]}, unexpected {unexpected[:5]}.")


def load_grounder(path: str | Path, sam: Sam | None = None, device: str | torch.device = "cpu") -> Grounder:
    """Rebuild a fitted Grounder in eval mode from a run folder (its last weights) or one checkpoint file
    (epoch_NNN.safetensors, next to its grounder.json).

    sam: the SAM the run was fitted with (its frozen image encoder is used as is; the checkpoint holds
    the trained prompt encoder and mask decoder). Needed when the run used the refiner.
    """
    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    spec_path = weights.parent / CONFIG_FILE
    if not spec_path.exists():
        raise FileNotFoundError(f"No {CONFIG_FILE} next to {weights}; pass a run folder written by fit().")
    spec = _read_spec(spec_path)
    if spec.get("format") != FORMAT_VERSION:
        raise ValueError(f"{spec_path} has format {spec.get('format')}; this code reads {FORMAT_VERSION}.")
    config = FitConfig(**spec["config"])
    if config.use_refiner:
        if sam is None:
            raise ValueError(f"The run at {weights.parent} used the SAM refiner: pass the SAM it was fitted with.")
        if _sam_shapes(sam) != spec["sam"]:
            raise ValueError(f"This SAM has shapes {_sam_shapes(sam)}, the run was fitted with {spec['sam']}.")
    # Runs fitted before the channel layout was saved stack each record's own kinds.
    grounder = build_grounder(config, spec["in_channels"], sam, spec["text_dim"], spec["text_layers"], spec.get("kinds"))
    _load_trainable(grounder, weights)
    return grounder.to(device).eval()


def iter_log(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The training log of a run, one dict per step (step, epoch, lr, loss, its parts, grad_norm, elapsed)."""
    with open(Path(run_dir) / LOG_FILE) as f:
        for line in f:
            yield json.loads(line)
