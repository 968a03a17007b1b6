"""`flmm-probe`: record word-to-patch attention of frozen multimodal LLMs, and study it.

Commands:
  demo               the whole pipeline on the embedded default (shapes world + organism), on a CPU
  backbones          list the supported model families (config.model_type)
  record             record a dataset into a store (resumable; one shard set per torchrun rank)
  record-image       record one image + text + phrases into an AttentionRecord file
  analyze            score every layer's and head's maps against the masks -> parquet tables
  counterfactual     words or position: every head on texts with their phrases permuted
  fit                fit the U-Net mask decoder and the SAM refiner from a store
  evaluate           RES (cIoU, gIoU, P@t) and PNG (average recall) metrics of a fitted grounder
  segment            one image + phrases -> mask PNGs and an overlay
  chat               ask about an image; the answer's phrases are segmented
  gcg                grounded conversation generation on the shapes world (recall, mIoU, AP50)
  reason             reasoning segmentation on the shapes world (gIoU, cIoU)
  cot                visual chain of thought: ground, crop, ask again (answer accuracy with and without)
  view               one self-contained interactive HTML page of a record or store sample
  figures            render the figures of a run folder (PDF + PNG)
  report             a demo run folder's results page (Markdown), e.g. flmm-probe report runs/demo > docs/results.md
  organism train     retrain the embedded default models from a seed
  organism evaluate  score them: captions, questions, pointing per layer, SAM box mIoU

Examples:
  flmm-probe demo
  flmm-probe record --backbone organism --data shapes:test:200 --store runs/shapes/store
  flmm-probe analyze --store runs/shapes/store --data shapes:test:200 --out runs/shapes
  flmm-probe figures runs/shapes
  flmm-probe counterfactual --backbone organism --data shapes:test:100:caption --out runs/shapes/counterfactual
  flmm-probe record --backbone organism --data shapes:train:400:mix --store runs/shapes/train
  flmm-probe fit --store runs/shapes/train --data shapes:train:400:mix --out runs/shapes/fit
  flmm-probe evaluate --run runs/shapes/fit --store runs/shapes/store --data shapes:test:200
  flmm-probe record-image --backbone llava-hf/llava-1.5-7b-hf --dtype bfloat16 --image cat.jpg \\
      --text "A cat sleeps on a red sofa." --phrase "A cat" --phrase "a red sofa" --out cat.safetensors
  flmm-probe organism train --help
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def _rank() -> int:
    """This process's rank under torchrun (0 outside it)."""
    import os

    return int(os.environ.get("RANK", "0"))


def _backbone(args: argparse.Namespace):
    """The Backbone named by --backbone: "organism[:VARIANT]" (the embedded default), a hub id or a folder."""
    import os

    import torch

    from .backbones import load_backbone
    from .devices import placement

    gpus = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    kwargs = placement(os.environ, gpus, args.device_map)  # one GPU per rank under torchrun
    if args.dtype:
        kwargs["dtype"] = getattr(torch, args.dtype)
    return load_backbone(args.backbone, **kwargs)


def _record(args: argparse.Namespace) -> int:
    import json
    import os

    from .data.sources import open_dataset
    from .record_job import record_dataset
    from .store import Store

    backbone = _backbone(args)
    # Not the data: several datasets may be recorded into one store (the paper's training mixture).
    config = {"backbone": args.backbone, "instruction": backbone.instruction}
    if args.pooling != "mean":  # the paper's mean goes unsaid: stores recorded before --pooling still resume
        config["pooling"] = args.pooling
    store = Store.create(args.store, config, maps_dtype=args.maps_dtype, exist_ok=True)
    # torchrun and accelerate launch set RANK and WORLD_SIZE; each rank writes its own shards.
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    report = record_dataset(
        backbone, open_dataset(args.data), store, batch_size=args.batch_size, rank=rank, world_size=world_size,
        shard_size=args.shard_size, pooling=args.pooling,
    )
    print(json.dumps({"rank": rank, **report.as_dict()}))
    if world_size > 1:
        # Ranks only meet here: once every rank has written its shards, rank 0 writes the one manifest.
        import torch.distributed as dist

        dist.init_process_group("gloo")
        dist.barrier()
        if rank == 0:
            store.consolidate()
        dist.destroy_process_group()
    else:
        store.consolidate()
    return 0


def _record_image(args: argparse.Namespace) -> int:
    backbone = _backbone(args)
    record = backbone.record(args.image, args.text, args.phrase, pooling=args.pooling, hidden_states=not args.no_hidden)
    record.save(args.out)
    shapes = ", ".join(f"{kind} {tuple(m.shape)}" for kind, m in record.maps.items())
    print(f"{len(record.phrases)} phrases -> {args.out}  maps (phrase layer head y x): {shapes}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    import json

    from analyses.run import analyze

    from .data.sources import open_dataset
    from .store import Store

    dataset = open_dataset(args.data)
    paths = analyze(Store.open(args.store), dataset, args.out, sinks=args.sinks, partial=args.partial)
    if _rank() != 0:  # under torchrun rank 0 writes and reports the whole result
        return 0
    for name, path in paths.items():
        print(f"{name}: {path}")
    coverage = json.loads((Path(args.out) / "coverage.json").read_text())
    print(f"scored {coverage['scored']} of the dataset's {coverage['in_dataset']} samples")
    if args.backbone:
        _print_counterfactual(_backbone(args), dataset, Path(args.out), seed=0, batch_size=8)
    return 0


def _print_counterfactual(backbone, dataset, out: Path, seed: int, batch_size: int) -> None:
    import pandas as pd

    from analyses.counterfactual import run, summary_line

    table, skipped = run(backbone, dataset, out, seed=seed, batch_size=batch_size)
    print(summary_line(table, pd.read_parquet(out / "counterfactual.parquet")))
    print(f"skipped: {', '.join(f'{n} {reason}' for reason, n in sorted(skipped.items())) or 'none'}")
    print(f"counterfactual_table: {out / 'counterfactual_table.parquet'}")


def _counterfactual(args: argparse.Namespace) -> int:
    from .data.sources import open_dataset

    _print_counterfactual(_backbone(args), open_dataset(args.data), Path(args.out), args.seed, args.batch_size)
    return 0


def _sam(spec: str):
    """A segment_anything Sam from "organism", "vit_b|vit_l|vit_h:CHECKPOINT" or a checkpoint path."""
    if spec == "organism":
        from .organism import load_organism_sam

        return load_organism_sam()
    from .decoder.refiner import load_sam

    kind, _, checkpoint = spec.partition(":")
    return load_sam(kind, checkpoint) if checkpoint else load_sam(spec)


def _grounder(args: argparse.Namespace):
    """The fitted grounder of --run, with --sam's image encoder unless --no-refiner, on --device (a bare "cuda" is
    this rank's GPU under torchrun)."""
    import os

    from .decoder import load_grounder
    from .devices import rank_device

    device = rank_device(os.environ, True) if args.device == "cuda" else args.device
    return load_grounder(args.run, None if args.no_refiner else _sam(args.sam), device=device)


def _fit(args: argparse.Namespace) -> int:
    from .cache import EmbeddingCache
    from .data.sources import open_dataset
    from .fit import FitConfig, fit
    from .store import Store

    store = Store.open(args.store)
    config = FitConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, maps=args.maps,
        # a store that names no pooling was mean-pooled (`record` leaves the paper's default unsaid)
        pooling=store.config.get("pooling", "mean"),
        use_refiner=not args.no_refiner, use_text=not args.no_text, base_channels=args.base_channels,
        long_side=args.long_side, log_maps=args.log_maps,
    )
    sam = None if args.no_refiner else _sam(args.sam)
    cache = EmbeddingCache(args.cache) if args.cache else None
    run = fit(store, open_dataset(args.data), sam, config, args.out, cache=cache, resume=args.resume)
    print(f"grounder -> {run}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .cache import EmbeddingCache
    from .data.sources import open_dataset
    from .evaluate import evaluate, format_table
    from .store import Store

    grounder = _grounder(args)
    cache = EmbeddingCache(args.cache) if args.cache else None
    per_phrase, summary = evaluate(grounder, Store.open(args.store), open_dataset(args.data), cache, partial=args.partial)
    if _rank() != 0:  # under torchrun every rank holds the whole result; rank 0 writes it
        return 0
    out = Path(args.out or args.run)
    out.mkdir(parents=True, exist_ok=True)
    per_phrase.to_parquet(out / "per_phrase.parquet")
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(format_table(summary))
    return 0


def _segment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from PIL import Image

    from .evaluate import overlay, segment

    grounder = _grounder(args)
    masks, _, _ = segment(_backbone(args), grounder, args.image, args.text, args.phrase)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (phrase, mask) in enumerate(zip(args.phrase, masks)):
        Image.fromarray(mask.astype("uint8") * 255).save(out / f"mask_{i}.png")
        print(f"{phrase!r}: {int(mask.sum())} pixels -> {out / f'mask_{i}.png'}")
    overlay(args.image, masks, args.phrase).save(out / "overlay.png")
    print(f"overlay -> {out / 'overlay.png'}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from PIL import Image

    from .apps import ground_answer, shapes_phrases
    from .evaluate import overlay

    if args.phrase and args.noun_phrases:
        raise SystemExit("Give --phrase or --noun-phrases, not both.")
    phrases = args.phrase or shapes_phrases
    if args.noun_phrases:
        from .noun_phrases import noun_phrases

        phrases = noun_phrases(args.noun_phrases)
    grounder = _grounder(args)
    answer = ground_answer(_backbone(args), grounder, args.image, args.question, phrases, args.max_new_tokens)
    print(answer.text)
    if not answer.exact:
        print("(the answer retokenized differs from the generated tokens: its phrases were recorded as retokenized)")
    if answer.note:
        print(f"nothing grounded: {answer.note}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, phrase in enumerate(answer.phrases):
        Image.fromarray(phrase.mask.astype("uint8") * 255).save(out / f"mask_{i}.png")
        print(f"[{phrase.start}:{phrase.end}] {phrase.text!r}: {int(phrase.mask.sum())} pixels, score {phrase.score:.2f} "
              f"-> {out / f'mask_{i}.png'}")
    overlay(args.image, [p.mask for p in answer.phrases], [p.text for p in answer.phrases]).save(out / "overlay.png")
    print(f"overlay -> {out / 'overlay.png'}")
    return 0


def _grounded_task(args: argparse.Namespace) -> int:
    import json

    from .data.shapes import ShapesDataset
    from .data.reasonseg import ReasonSeg
    from .grounded_tasks import evaluate_cot, evaluate_gcg, evaluate_reasoning, evaluate_reasonseg

    grounder = _grounder(args)
    if getattr(args, "reasonseg", None):
        root, _, split = args.reasonseg.rpartition(":")
        frame, summary = evaluate_reasonseg(_backbone(args), grounder, ReasonSeg(root, split))
    else:
        task = {"gcg": evaluate_gcg, "reason": evaluate_reasoning, "cot": evaluate_cot}[args.command]
        frame, summary = task(_backbone(args), grounder, list(ShapesDataset(args.split, args.scenes)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / f"{args.command}.parquet")
    (out / f"{args.command}.json").write_text(json.dumps(summary, indent=2, default=float))
    print("\n".join(f"{key:>28}  {value:.3f}" if isinstance(value, float) else f"{key:>28}  {value}" for key, value in summary.items()))
    return 0


def _view(args: argparse.Namespace) -> int:
    from .viewer import View, store_view

    source = Path(args.source)
    if source.is_file():
        from .record import AttentionRecord

        view = View(AttentionRecord.load(source), image=args.image, kind=args.kind, title=source.stem)
    else:
        from .data.sources import open_dataset
        from .store import Store

        store = Store.open(source)
        tokenizer = None
        if store.config.get("backbone", "").startswith("organism"):
            from .organism import load_organism

            tokenizer = load_organism(store.config["backbone"].partition(":")[2] or "small")[1].tokenizer
        grounder = _grounder(args) if args.run else None
        view = store_view(store, args.sample, open_dataset(args.data) if args.data else None, args.analysis, grounder,
                          args.kind, tokenizer)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(view.page())
    print(f"view -> {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from analyses.report import main as report_main

    return report_main(args.rest)


def _figures(args: argparse.Namespace) -> int:
    from figures.render import main as figures_main

    return figures_main(args.rest)  # its own parser: flmm-probe figures --help


def _backbones(args: argparse.Namespace) -> int:
    from .backbones import list_backbones

    print("\n".join(list_backbones()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    print(run_demo(args.out, num_scenes=args.scenes, train_scenes=args.train_scenes, epochs=args.epochs, variant=args.variant))
    return 0


def _organism_train(args: argparse.Namespace) -> int:
    from .organism.train import main as train_main

    return train_main(args.rest)


def _organism_evaluate(args: argparse.Namespace) -> int:
    from .organism.scores import main as evaluate_main

    return evaluate_main(args.rest)


def _backbone_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone", default="organism",
        help='"organism[:VARIANT]" (the embedded default), or a hub id / local folder of an HF image-text-to-text model',
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="model dtype when loading (default: the dtype the checkpoint was saved in, as "
                             "from_pretrained's dtype='auto'; the organism: float32). A float16 folder such as an "
                             "organism training run's records in float16, about 3x slower on a CPU: pass float32")
    parser.add_argument("--device-map",
                        help='e.g. "auto" to spread a model larger than one GPU over several (under torchrun, over this '
                             "rank's share of the node's GPUs); without it, with CUDA, the model goes to cuda:LOCAL_RANK")


def _sam_arguments(parser: argparse.ArgumentParser, device: bool = True) -> None:
    parser.add_argument("--sam", default="organism", help='"organism", "vit_l:CHECKPOINT" or a SAM checkpoint path')
    parser.add_argument("--no-refiner", action="store_true", help="coarse U-Net masks only, no SAM")
    if device:
        parser.add_argument("--device", default="cpu",
                            help="where the fitted decoder and SAM run, e.g. cuda or cuda:1 (cuda under torchrun: "
                                 "cuda:LOCAL_RANK)")


def _pooling_argument(parser: argparse.ArgumentParser) -> None:
    from .phrases import POOLINGS

    parser.add_argument("--pooling", choices=POOLINGS, default="mean",
                        help="merge of a phrase's tokens' maps: mean (the paper's), max, or last (the phrase's last "
                             "token, the only one a causal LM lets read the whole phrase)")


def _positive(text: str) -> int:
    """An integer >= 1, for counts and sizes (refused at parse time, before any work starts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where it has one (not "default: None" on required options and flags)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .decoder.grounder import MAP_KINDS
    from .fit import FitConfig

    parser = argparse.ArgumentParser(
        prog="flmm-probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="the whole pipeline on the embedded default", formatter_class=_Defaults
    )
    demo.add_argument("--out", default="runs/demo", help="run folder (rerunning resumes)")
    demo.add_argument("--scenes", type=_positive, default=48, help="held-out shapes-world scenes to analyse and evaluate")
    demo.add_argument("--train-scenes", type=_positive, default=160, help="shapes-world scenes to fit the decoder on")
    demo.add_argument("--epochs", type=_positive, default=4, help="epochs of the decoder fit")
    demo.add_argument("--variant", default="small", help="organism variant")
    demo.set_defaults(handler=_demo)

    listing = commands.add_parser("backbones", help="list supported model families")
    listing.set_defaults(handler=_backbones)

    record = commands.add_parser(
        "record", help="record a dataset into a store (resumable; torchrun-aware)",
        formatter_class=_Defaults,
    )
    _backbone_arguments(record)
    record.add_argument("--data", required=True, help="dataset spec: shapes:SPLIT:N[:TASK], refcoco:ROOT:SPLIT, png:ROOT:SPLIT")
    record.add_argument("--store", required=True, help="store folder (created, or resumed if it exists)")
    record.add_argument("--batch-size", type=_positive, default=1, help="samples per LMM forward")
    record.add_argument("--shard-size", type=_positive, default=64, help="samples per shard file")
    record.add_argument("--maps-dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                        help="dtype of the stored attention maps")
    _pooling_argument(record)
    record.set_defaults(handler=_record)

    one = commands.add_parser(
        "record-image", help="record one image + text + phrases into a file",
        formatter_class=_Defaults,
    )
    _backbone_arguments(one)
    one.add_argument("--image", required=True, help="image file")
    one.add_argument("--text", required=True, help="text fed as the assistant's answer")
    one.add_argument("--phrase", action="append", required=True, help="a phrase of the text (repeat for more)")
    one.add_argument("--out", required=True, help="output .safetensors AttentionRecord")
    _pooling_argument(one)
    one.add_argument("--no-hidden", action="store_true", help="do not keep the phrase tokens' hidden states")
    one.set_defaults(handler=_record_image)

    analyze = commands.add_parser(
        "analyze", help="score a store's maps against the dataset's masks (parquet tables for figures; torchrun-aware)",
        formatter_class=_Defaults,
    )
    analyze.add_argument("--store", required=True, help="store folder written by `flmm-probe record`")
    analyze.add_argument("--data", required=True, help="the dataset spec the store was recorded from")
    analyze.add_argument("--out", required=True, help="run folder for the tables")
    analyze.add_argument("--sinks", action="store_true", help="zero attention-sink cells before scoring")
    analyze.add_argument("--partial", action="store_true",
                         help="score the samples the store holds even if it lacks some of the dataset's (coverage.json says how many)")
    analyze.add_argument("--backbone",
                         help="also run `counterfactual` with this backbone (the one the store was recorded with) on the "
                              "dataset's samples of several phrases: do the maps follow the words or their order?")
    analyze.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="with --backbone: model dtype")
    analyze.add_argument("--device-map", help="with --backbone: e.g. auto")
    analyze.set_defaults(handler=_analyze)

    counterfactual = commands.add_parser(
        "counterfactual", formatter_class=_Defaults,
        help="words or position: record each text with its phrases in another order, score every head against "
             "the object each phrase names and the one its slot held",
        description="Record each sample's text as it is and with its phrases permuted (each phrase's words in another "
                    "phrase's slot), on the same image, and score every layer and head with the pointing game against the "
                    "object the phrase names and the object whose phrase held its slot. A head that follows the words "
                    "points at the named object in both texts; one that follows list position points at the slot's.",
    )
    _backbone_arguments(counterfactual)
    counterfactual.add_argument("--data", required=True,
                                help="dataset spec with several phrases per text, e.g. shapes:test:100:caption or png:ROOT:val")
    counterfactual.add_argument("--out", required=True, help="folder for counterfactual.parquet and counterfactual_table.parquet")
    counterfactual.add_argument("--seed", type=int, default=0, help="draws each sample's permutation")
    counterfactual.add_argument("--batch-size", type=_positive, default=8, help="samples per LMM forward")
    counterfactual.set_defaults(handler=_counterfactual)

    fit = commands.add_parser(
        "fit", help="fit the U-Net decoder and SAM refiner from a store (torchrun-aware)",
        formatter_class=_Defaults,
    )
    fit.add_argument("--store", required=True, help="store folder written by `flmm-probe record` (train split)")
    fit.add_argument("--data", required=True, help="the dataset spec the store was recorded from (for the masks)")
    fit.add_argument("--out", required=True,
                     help="run folder (a new one, or one to --resume): grounder.json, weights, log.jsonl")
    _sam_arguments(fit, device=False)
    fit.add_argument("--cache", help="SAM image-embedding cache folder (default: RUN/sam_embeddings)")
    recipe = FitConfig()  # the defaults are the paper's recipe, stated once there
    fit.add_argument("--epochs", type=_positive, default=recipe.epochs, help="passes over the stored phrases")
    fit.add_argument("--batch-size", type=_positive, default=recipe.batch_size, help="phrases per step per process")
    fit.add_argument("--lr", type=_positive_float, default=recipe.lr, help="AdamW peak learning rate")
    fit.add_argument("--seed", type=int, default=recipe.seed, help="seeds initialisation and data order")
    fit.add_argument("--maps", choices=list(MAP_KINDS), default=recipe.maps, help="view kinds as channels, or averaged")
    fit.add_argument("--no-text", action="store_true", help="no phrase-token prompts for the refiner")
    fit.add_argument("--base-channels", type=_positive, default=recipe.base_channels, help="U-Net width of its first stage")
    fit.add_argument("--long-side", type=_positive, default=recipe.long_side,
                     help="U-Net input size: maps are resized to this on their long side")
    fit.add_argument("--resume", action="store_true",
                     help="continue the fit in --out from its last finished epoch (pass the options it was started with)")
    fit.add_argument("--log-maps", action="store_true",
                     help="feed the U-Net each map's log (floored at 1e-6, centred per channel) instead of the map")
    fit.set_defaults(handler=_fit)

    evaluate = commands.add_parser(
        "evaluate", help="RES and PNG metrics of a fitted grounder on a recorded dataset (torchrun-aware)",
        formatter_class=_Defaults,
    )
    evaluate.add_argument("--run", required=True, help="the fit's run folder")
    evaluate.add_argument("--store", required=True, help="store folder of the held-out split (`flmm-probe record`)")
    evaluate.add_argument("--data", required=True, help="the dataset spec that store was recorded from (for the masks)")
    _sam_arguments(evaluate)
    evaluate.add_argument("--cache", help="SAM image-embedding cache folder")
    evaluate.add_argument("--out", help="where metrics.json and per_phrase.parquet go (default: the --run folder)")
    evaluate.add_argument("--partial", action="store_true",
                          help="score the samples the store holds even if it lacks some of the dataset's (the table says how many)")
    evaluate.set_defaults(handler=_evaluate)

    segment = commands.add_parser(
        "segment", help="one image + phrases -> mask PNGs and an overlay",
        formatter_class=_Defaults,
    )
    _backbone_arguments(segment)
    segment.add_argument("--run", required=True, help="the fit's run folder")
    _sam_arguments(segment)
    segment.add_argument("--image", required=True, help="image file")
    segment.add_argument("--text", required=True, help="text fed as the assistant's answer")
    segment.add_argument("--phrase", action="append", required=True, help="a phrase of the text to segment (repeat for more)")
    segment.add_argument("--out", required=True, help="folder for mask_<i>.png and overlay.png")
    segment.set_defaults(handler=_segment)

    chat = commands.add_parser(
        "chat", formatter_class=_Defaults,
        help="ask the frozen LMM about an image; its answer's phrases are segmented (masks + overlay)",
        description="The frozen LMM answers with plain generate (greedy), then one pass with the probe over prompt + "
                    "answer records the answer's phrases and the fitted decoder + refiner segment them.",
    )
    _backbone_arguments(chat)
    chat.add_argument("--run", required=True, help="the fit's run folder")
    _sam_arguments(chat)
    chat.add_argument("--image", required=True, help="image file")
    chat.add_argument("--question", required=True, help='e.g. "Please give me a description of the image."')
    chat.add_argument("--phrase", action="append",
                      help="a phrase of the answer to segment (repeat for more; default: the shapes world's object phrases)")
    chat.add_argument("--noun-phrases", metavar="PIPELINE", nargs="?", const="en_core_web_sm",
                      help="segment the answer's English noun phrases, found by this spaCy pipeline (default when given "
                           "alone: en_core_web_sm; needs pip install 'flmm_probe[english]')")
    chat.add_argument("--max-new-tokens", type=_positive, default=64, help="longest answer")
    chat.add_argument("--out", default="runs/chat", help="folder for mask_<i>.png and overlay.png")
    chat.set_defaults(handler=_chat)

    for name, what in (("gcg", "grounded conversation generation: describe each scene, segment every object phrase "
                               "(GLaMM's recall, mIoU, AP50; caption correctness)"),
                       ("reason", "reasoning segmentation: 'which object is the largest?' answered, the answer's object "
                                  "segmented (gIoU, cIoU, answer accuracy)"),
                       ("cot", "visual chain of thought: 'what shape is the red object?' answered on the whole image, and "
                               "again on a crop around the object grounded from the question (and around its true mask)")):
        task = commands.add_parser(name, help=f"{what} on shapes-world scenes", formatter_class=_Defaults)
        _backbone_arguments(task)
        task.add_argument("--run", required=True, help="the fit's run folder")
        _sam_arguments(task)
        task.add_argument("--split", default="zoom" if name == "cot" else "test",
                          help="shapes-world split (test, edge, close, compositional, zoom: small objects on a wide canvas, "
                               "decoy: a target among objects of its colour or its size)")
        task.add_argument("--scenes", type=_positive, default=100, help="scenes of the split")
        task.add_argument("--out", required=True, help=f"folder for {name}.parquet (per item) and {name}.json (summary)")
        if name == "reason":
            task.add_argument("--reasonseg", metavar="ROOT:SPLIT",
                              help="score ReasonSeg-format data (LISA: ROOT/SPLIT/<name>.jpg + <name>.json) instead of "
                                   "shapes-world scenes; each answer is segmented as one phrase")
        task.set_defaults(handler=_grounded_task)

    view = commands.add_parser(
        "view", formatter_class=_Defaults,
        help="one self-contained HTML page: every phrase x layer x head map over the image, interactive",
        description="Write one HTML page (no network needed) that shows a record: the text with its phrases, a layer x head "
                    "grid of the chosen phrase's maps, the chosen map over the image with an opacity slider, the mask's "
                    "outline, fitted masks and per-head scores where given. Arrow keys move across layers and heads, "
                    "[ and ] across phrases; the URL hash keeps the state.",
    )
    view.add_argument("source", help="a record file (.safetensors, from record-image) or a store folder")
    view.add_argument("--out", required=True, help="the HTML page to write")
    view.add_argument("--sample", help="store: the sample id (default: its first sample)")
    view.add_argument("--data", help="store: the dataset spec it was recorded from (the image and masks)")
    view.add_argument("--analysis", help="store: an `analyze` run folder (per-head pointing, AUROC, mass in mask)")
    view.add_argument("--run", help="store: a fitted run folder (coarse and refined masks; needs --data)")
    _sam_arguments(view)
    view.add_argument("--image", help="record file: the image it was recorded on")
    view.add_argument("--kind", default="fused", help="view kind to show (global, tiles, ...) or fused (all averaged)")
    view.set_defaults(handler=_view)

    report = commands.add_parser("report", help="a demo run folder's results as Markdown (see its --help)", add_help=False)
    report.set_defaults(handler=_report, passthrough=True)

    figures = commands.add_parser("figures", help="render every figure a run folder allows (see its --help)", add_help=False)
    figures.set_defaults(handler=_figures, passthrough=True)

    organism = commands.add_parser("organism", help="the embedded default models")
    organism_commands = organism.add_subparsers(dest="organism_command", required=True, metavar="ACTION")
    train = organism_commands.add_parser("train", help="retrain them from a seed (see its --help)", add_help=False)
    train.set_defaults(handler=_organism_train, passthrough=True)
    scores = organism_commands.add_parser("evaluate", help="caption, QA, pointing and SAM scores (see its --help)", add_help=False)
    scores.set_defaults(handler=_organism_evaluate, passthrough=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # Commands with a parser of their own (figures, organism train) receive the remaining arguments.
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
