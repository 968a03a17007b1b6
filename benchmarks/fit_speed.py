"""Fitting from the store + embedding cache vs the reference code's loop, side by side on the same data.

The reference loop (wusize/F-LMM) runs, for every sample of every epoch, the LMM forward (to get the
attention maps and hidden states), SAM's image encoder, then one step of the heads. `fit` reads the maps
and hidden states from a store recorded once, and the embeddings from a cache filled once. Both loops
here share everything else: the same samples, batch order, seed, initial weights and `train_step`.

Reported (JSON): wall time per epoch after the first for both, the reference loop's time per component
(LMM forward, SAM image encoder, heads step) and the store loop's (store + cache reads, heads step), the
one-off costs of the store path (recording, embedding), final training loss and RES scores of both on the
training samples, and the store's bytes per phrase against layers x heads x y x x x 2 bytes (float16).
The ratio at another scale follows from the components:
    speedup = (t_lmm + t_sam_encoder + t_step) / (t_read + t_step), per sample.
With --paper-shapes it also times, on one sample, SAM ViT-L's image encoder at 1024 (random weights) and
one heads step at the paper's shapes (1024 map channels, 24x24 maps, ViT-L's prompt encoder and mask
decoder, 4096-wide hidden states of 33 layers); the 7B LMM forward is not timed here (see probe_speed.py).
--paper-shapes-only times just that, on --device (the rest of the benchmark stays on the CPU).

The reference loop records attention with this project's probe (exact SDPA + the phrase rows), which is
faster than the reference code's eager output_attentions=True: the speedup reported is a lower bound.

    python benchmarks/fit_speed.py --samples 3 --sam vit_b --out docs/fit_speed.json      # a few minutes, 2 CPUs
    python benchmarks/fit_speed.py --samples 8 --sam organism --random-lmm                # seconds
    python benchmarks/fit_speed.py --samples 48 --epochs 6 --lr 1e-3 --sam organism      # equal metrics, minutes
    python benchmarks/fit_speed.py --paper-shapes-only --device cuda --out docs/fit_speed_paper_shapes_h100.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flmm_probe import load_backbone
from flmm_probe.cache import EmbeddingCache
from flmm_probe.data.samples import GroundingDataset, GroundingSample
from flmm_probe.data.sources import ShapesGrounding
from flmm_probe.decoder.refiner import SamRefiner, load_sam
from flmm_probe.evaluate import evaluate
from flmm_probe.decoder.grounder import GroundingInput, build_grounder, load_grounder, record_channels
from flmm_probe.decoder.objective import lr_factor
from flmm_probe.fit import FitConfig, epoch_batches, TrainingPhrases, PhraseReader, fit, iter_log, train_step
from flmm_probe.record_job import record_dataset
from flmm_probe.store import Store

log = logging.getLogger("fit_speed")


def lmm(variant: str, random: bool):
    """(model, processor): the shipped organism, or the organism's shapes with random weights."""
    from flmm_probe.organism import OrganismNotFoundError, load_organism
    from flmm_probe.organism.build import VARIANTS, build_lmm, build_processor

    if not random:
        try:
            return load_organism(variant), "organism " + variant
        except (OrganismNotFoundError, OSError) as err:
            log.warning("organism %r not shipped (%s); using its shapes with random weights", variant, err)
    torch.manual_seed(0)
    cfg = VARIANTS[variant]
    processor = build_processor(cfg.patch)
    return (build_lmm(cfg, processor.tokenizer).eval(), processor), f"organism {variant} shapes, random weights"


def sam_model(kind: str):
    """A segment_anything Sam: official shapes ("vit_b", "vit_l", "vit_h", random weights) or the organism's."""
    if kind == "organism":
        from flmm_probe.organism import OrganismNotFoundError, load_organism_sam
        from flmm_probe.organism.build import SamConfig, build_sam

        try:
            return load_organism_sam()
        except (OrganismNotFoundError, OSError, FileNotFoundError):
            torch.manual_seed(0)
            return build_sam(SamConfig()).eval()
    return load_sam(kind)


class FirstSamples(GroundingDataset):
    """The first n samples of a dataset. Shapes-world RES samples come scene by scene, so several
    expressions share one image, as RefCOCO's do."""

    def __init__(self, base: GroundingDataset, n: int) -> None:
        super().__init__()
        self.base = base
        self._entries = list(range(min(n, len(base))))

    def _build(self, index: int) -> GroundingSample:
        return self.base[index]


class LiveReader(PhraseReader):
    """The reference loop's inputs: the LMM and SAM's image encoder run for every sample of every epoch."""

    def __init__(self, backbone, grounder, dataset, phrases, refiner: SamRefiner | None) -> None:
        super().__init__(grounder, None, dataset, phrases, None)
        self.backbone, self.refiner = backbone, refiner
        self.times: dict[str, float] = defaultdict(float)
        self._embedding = None

    def sample(self, sample_id):
        if self._last is None or self._last[0] != sample_id:
            sample = self.dataset[self.phrases.dataset_index[sample_id]]
            start = time.perf_counter()
            record = self.backbone.record(sample.image(), sample.text, sample.spans, pooling=self.grounder.pooling)
            self.times["lmm"] += time.perf_counter() - start
            if self.refiner is not None:
                start = time.perf_counter()
                embedding, input_size, _ = self.refiner.embed(sample.image())
                self.times["sam_encoder"] += time.perf_counter() - start
                self._embedding = (embedding[0], input_size)
            masks = torch.from_numpy(sample.masks()).float()
            self._last = (sample_id, record_channels(record, self.grounder.maps), record.hidden, masks, tuple(record.image_size))
        return self._last[1:]

    def embedding(self, sample_id):
        return self._embedding


def reference_fit(backbone, sam, dataset, phrases: TrainingPhrases, config: FitConfig, shapes: dict) -> tuple[torch.nn.Module, dict]:
    """The reference loop: live inputs, the same batches, initial weights and steps as fit(). Returns
    (grounder, timings {epoch seconds, component seconds per epoch, last epoch's mean loss})."""
    grounder = build_grounder(config, shapes["in_channels"], sam, shapes["text_dim"], shapes["text_layers"])
    grounder.train()
    trainable = [p for p in grounder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    total = len(epoch_batches(phrases, 0, config, 0, 1)) * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, config.warmup_ratio))
    reader = LiveReader(backbone, grounder, dataset, phrases, SamRefiner(sam, use_text=False) if config.use_refiner else None)
    epochs, components, losses = [], [], []
    for epoch in range(config.epochs):
        reader.times.clear()
        reader._last = None  # the reference has no memory across epochs
        start = time.perf_counter()
        for batch in epoch_batches(phrases, epoch, config, 0, 1):
            inputs, targets = reader.batch(batch)
            t = time.perf_counter()
            line = train_step(grounder, optimizer, scheduler, trainable, inputs, targets, config)
            reader.times["step"] += time.perf_counter() - t
            losses.append((epoch, line["loss"]))
        epochs.append(time.perf_counter() - start)
        components.append(dict(reader.times))
    last = [l for e, l in losses if e == config.epochs - 1]
    return grounder.eval(), {"epoch_s": epochs, "components_s": components, "last_epoch_loss": sum(last) / len(last)}


def store_read_seconds(store, dataset, phrases, cache, grounder_config: FitConfig, shapes, sam) -> float:
    """Seconds to read one epoch's inputs from the store and the cache (no training)."""
    grounder = build_grounder(grounder_config, shapes["in_channels"], sam, shapes["text_dim"], shapes["text_layers"])
    reader = PhraseReader(grounder, store, dataset, phrases, cache if grounder_config.use_refiner else None)
    start = time.perf_counter()
    for batch in epoch_batches(phrases, 1, grounder_config, 0, 1):
        reader.batch(batch)
    return time.perf_counter() - start


def paper_shapes(repeats: int = 1, device: str = "cpu", kind: str = "vit_l") -> dict:
    """Seconds for one image-encoder forward at 1024 (SAM `kind`, ViT-L for the paper) and for one heads step
    at the paper's shapes, on `device`: the minimum over `repeats` (at least 3 on a GPU, after a warm-up),
    each timed between CUDA synchronisations."""
    cuda = torch.device(device).type == "cuda"
    repeats = max(repeats, 3) if cuda else repeats
    out: dict = {"device": device, "gpu": torch.cuda.get_device_name(device) if cuda else None, "sam": kind,
                 "repeats": repeats}
    if cuda:  # what the GPU's float32 matmuls and convolutions may use (TF32 changes both speed and results)
        out["float32_matmul_precision"] = torch.get_float32_matmul_precision()
        out["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    sam = load_sam(kind).to(device)
    refiner = SamRefiner(sam, use_text=False)
    image = torch.randint(0, 256, (480, 640, 3), dtype=torch.uint8).numpy()

    def timed(step: Callable[[], Any]) -> tuple[float, Any]:
        _sync(device)
        start = time.perf_counter()
        result = step()
        _sync(device)
        return time.perf_counter() - start, result

    if cuda:  # the first call pays for CUDA/cuDNN initialisation and kernel selection
        refiner.embed(image)
    times = []
    for _ in range(repeats):
        seconds, (embedding, input_size, _) = timed(lambda: refiner.embed(image))
        times.append(seconds)
    out["vit_l_encoder_s"], out["vit_l_encoder_s_all"] = min(times), times
    config = FitConfig()
    # build_grounder builds on the CPU (as fit() does, which then moves it): the shared image encoder is
    # already on the device, the copied prompt encoder and mask decoder, the U-Net and the text prompt follow.
    grounder = build_grounder(config, 1024, sam, text_dim=4096, text_layers=33).to(device).train()
    trainable = [p for p in grounder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    # Inputs on the device already: fit()'s reader hands CPU tensors over (~2.5 MB a phrase), left out here.
    item = GroundingInput(torch.rand(1, 1024, 24, 24, device=device), (480, 640),
                          [torch.randn(5, 33, 4096, device=device)], embedding[0], input_size)
    target = [torch.zeros(1, 480, 640, device=device)]
    target[0][0, 100:300, 200:400] = 1
    times = []
    for _ in range(repeats + 1):  # the first step builds the optimiser state (and warms the GPU's kernels up)
        seconds, _ = timed(lambda: train_step(grounder, optimizer, scheduler, trainable, [item], target, config))
        times.append(seconds)
    out["heads_step_s_per_phrase"], out["heads_step_s_all"] = min(times[1:]), times
    # what the store holds per phrase at this shape (float16): maps + 5 tokens' hidden states
    out["store_bytes_per_phrase"] = 1024 * 24 * 24 * 2 + 5 * 33 * 4096 * 2
    # per one-phrase sample, reads (~2.5 MB) neglected: add the 7B LMM forward's seconds to the numerator
    out["speedup_without_lmm"] = (out["vit_l_encoder_s"] + out["heads_step_s_per_phrase"]) / out["heads_step_s_per_phrase"]
    return out


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3, help="training samples (shapes-world RES expressions)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=FitConfig.lr, help="learning rate (default: the paper's)")
    parser.add_argument("--sam", default="vit_b", help="vit_b | vit_l | vit_h (random weights, 1024 input) | organism")
    parser.add_argument("--variant", default="small", help="organism variant of the LMM")
    parser.add_argument("--random-lmm", action="store_true", help="the organism's shapes with random weights")
    # One thread by default: on a shared CPU, two OpenMP threads made identical steps vary 2-15 s.
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--paper-shapes", action="store_true", help="also time ViT-L and a heads step at paper shapes")
    parser.add_argument("--paper-shapes-only", action="store_true",
                        help="time only ViT-L and a heads step at paper shapes (no LMM, store or reference loop)")
    parser.add_argument("--device", default="cpu", help="where the paper-shapes timings run (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="paper-shapes timings: the minimum of this many (at least 3 on a GPU)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.paper_shapes_only:
        result = {"threads": args.threads, "machine": platform.processor() or platform.machine(),
                  "torch": torch.__version__, "paper_shapes": paper_shapes(args.repeats, args.device)}
        return _report(result, args.out)

    (model, processor), lmm_name = lmm(args.variant, args.random_lmm)
    backbone = load_backbone(model, processor)
    sam = sam_model(args.sam)
    dataset = FirstSamples(ShapesGrounding("train", args.samples, "res"), args.samples)
    config = FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=0)
    result: dict = {"lmm": lmm_name, "sam": args.sam, "samples": args.samples, "epochs": args.epochs,
                    "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads, "machine": platform.processor() or platform.machine(),
                    "torch": torch.__version__}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = Store.create(tmp / "store", {"model": lmm_name}, maps_dtype="float16")
        start = time.perf_counter()
        record_dataset(backbone, dataset, store, progress=False)
        result["once_record_s"] = time.perf_counter() - start
        cache = EmbeddingCache(tmp / "cache")
        start = time.perf_counter()
        result["once_embedded_images"] = cache.fill(SamRefiner(sam, use_text=False), dataset, progress=False)
        result["once_embed_s"] = time.perf_counter() - start
        phrases = TrainingPhrases(sorted(s.sample_id for s in dataset),
                           {dataset[i].sample_id: i for i in range(len(dataset))},
                           {s.sample_id: len(s.phrases) for s in dataset},
                           {s.sample_id: s.image_key for s in dataset})
        record = store.read(phrases.sample_ids[0])
        shapes = {"in_channels": record_channels(record).shape[1], "text_layers": record.hidden[0].shape[1],
                  "text_dim": record.hidden[0].shape[2]}

        # store path: fit() itself; per-epoch time from its log
        run = fit(store, dataset, sam, config, tmp / "run", cache, progress=False)
        lines = list(iter_log(run))
        ends = [max(l["elapsed"] for l in lines if l["epoch"] == e) for e in range(1, args.epochs + 1)]
        store_epochs = [b - a for a, b in zip([0.0] + ends, ends)]
        read_s = store_read_seconds(store, dataset, phrases, cache, config, shapes, sam)
        last = [l["loss"] for l in lines if l["epoch"] == args.epochs]
        result["store"] = {"epoch_s": store_epochs, "read_s_per_epoch": read_s,
                           "step_s_per_epoch": store_epochs[-1] - read_s, "last_epoch_loss": sum(last) / len(last)}
        fitted = load_grounder(run, sam)

        reference, timings = reference_fit(backbone, sam, dataset, phrases, config, shapes)
        result["reference"] = timings

        # same metrics: both grounders scored on the training samples, from the store and the cache
        for name, grounder in (("store", fitted), ("reference", reference)):
            _, summary = evaluate(grounder, store, dataset, cache, progress=False)
            result[name]["res"] = summary["res"]

        per_phrase = store.bytes_per_phrase()
        layers, heads, y, x = record.maps["global"].shape[1:]
        result["store_bytes_per_phrase"] = {**per_phrase, "layers_heads_y_x_2": int(layers * heads * y * x * 2),
                                            "shape": [int(layers), int(heads), int(y), int(x)]}

    after_first = slice(1, None) if args.epochs > 1 else slice(None)
    ref_epoch = sum(timings["epoch_s"][after_first]) / len(timings["epoch_s"][after_first])
    store_epoch = sum(store_epochs[after_first]) / len(store_epochs[after_first])
    result["epoch_s_after_first"] = {"reference": ref_epoch, "store": store_epoch, "speedup": ref_epoch / store_epoch}
    if args.paper_shapes:
        result["paper_shapes"] = paper_shapes(args.repeats, args.device)
    return _report(result, args.out)


def _report(result: dict, out: Path | None) -> dict:
    text = json.dumps(result, indent=2, default=float)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
