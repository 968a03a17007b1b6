"""`flmm-probe`: record word-to-patch attention of frozen multimodal LLMs, and study it.

Commands:
  demo               the whole thing on the embedded default (shapes world + organism), in a minute on a CPU
  backbones          list the supported model families (config.model_type)
  record             record one image + text + phrases with any supported model, save an AttentionRecord
  organism train     retrain the embedded default models from a seed

Examples:
  flmm-probe demo
  flmm-probe record --model llava-hf/llava-1.5-7b-hf --image cat.jpg \\
      --text "A cat sleeps on a red sofa." --phrase "A cat" --phrase "a red sofa" --out cat.safetensors
  flmm-probe organism train --help
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _record(args: argparse.Namespace) -> int:
    import torch

    from .backbones import load_backbone

    kwargs = {}
    if args.dtype:
        kwargs["dtype"] = getattr(torch, args.dtype)
    if args.device_map:
        kwargs["device_map"] = args.device_map
    backbone = load_backbone(args.model, **kwargs)
    record = backbone.record(args.image, args.text, args.phrase, pooling=args.pooling, hidden_states=not args.no_hidden)
    record.save(args.out)
    shapes = ", ".join(f"{kind} {tuple(m.shape)}" for kind, m in record.maps.items())
    print(f"{len(record.phrases)} phrases -> {args.out}  maps (phrase layer head y x): {shapes}")
    return 0


def _backbones(args: argparse.Namespace) -> int:
    from .backbones import list_backbones

    print("\n".join(list_backbones()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    print(run_demo(num_scenes=args.scenes, variant=args.variant))
    return 0


def _organism(args: argparse.Namespace) -> int:
    from .organism.train import main as train_main

    return train_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flmm-probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="record and score attention on the embedded default")
    demo.add_argument("--scenes", type=int, default=48, help="held-out shapes-world scenes to record")
    demo.add_argument("--variant", default="small", help="organism variant")
    demo.set_defaults(run=_demo)

    listing = commands.add_parser("backbones", help="list supported model families")
    listing.set_defaults(run=_backbones)

    record = commands.add_parser(
        "record", help="record one image + text + phrases", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    record.add_argument("--model", required=True, help="hub id or local folder of an HF image-text-to-text model")
    record.add_argument("--image", required=True, help="image file")
    record.add_argument("--text", required=True, help="text fed as the assistant's answer")
    record.add_argument("--phrase", action="append", required=True, help="a phrase of the text (repeat for more)")
    record.add_argument("--out", required=True, help="output .safetensors AttentionRecord")
    record.add_argument("--pooling", choices=["mean", "max"], default="mean", help="merge of a phrase's tokens")
    record.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype when loading")
    record.add_argument("--device-map", help='e.g. "auto" to spread a large model over the GPUs')
    record.add_argument("--no-hidden", action="store_true", help="do not keep the phrase tokens' hidden states")
    record.set_defaults(run=_record)

    organism = commands.add_parser("organism", help="the embedded default models")
    organism_commands = organism.add_subparsers(dest="organism_command", required=True, metavar="ACTION")
    train = organism_commands.add_parser("train", help="retrain them from a seed (see its --help)", add_help=False)
    train.add_argument("rest", nargs=argparse.REMAINDER)
    train.set_defaults(run=_organism)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
