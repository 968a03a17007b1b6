"""A LLaVA-1.5-7B-shaped run end to end: record a few hundred samples into a store, fit, evaluate.

The model is LLaVA-1.5-7B's shape with random weights (CLIP ViT-L/14 at 336 px: 576 image tokens; a
32-layer, 4096-wide Llama), built in place on the device and in the dtype, with LLaVA-1.5's processor
geometry; the samples are shapes-world scenes (their masks are exact; their images are resized to 336 px as
any image is). No checkpoint is needed, so the run measures what the toolkit costs at real scale: samples per
second for each stage, peak GPU memory, and store bytes per phrase. The fit is the U-Net alone (no SAM
checkpoint here); `--refiner organism` adds the organism's SAM to exercise the refiner path.

    python benchmarks/real_scale.py --device cuda --dtype bfloat16 --scenes 40 --out docs/real_scale_h100.json  # ~300 samples
    python benchmarks/real_scale.py --layers 1 --vision-layers 1 --scenes 2 --task caption --dtype float32  # CPU: real widths
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from tiny import LLAVA15_TEMPLATE, real_tokenizer  # noqa: E402  (the tests' offline tokenizer builder, on the path just set)

from flmm_probe import load_backbone  # noqa: E402
from flmm_probe.data.sources import ShapesGrounding  # noqa: E402
from flmm_probe.decoder import load_grounder  # noqa: E402
from flmm_probe.evaluate import evaluate  # noqa: E402
from flmm_probe.fit import FitConfig, fit  # noqa: E402
from flmm_probe.record_job import record_dataset  # noqa: E402
from flmm_probe.store import Store  # noqa: E402

IMAGE_SIZE, PATCH = 336, 14


def llava15_7b(layers: int, vision_layers: int, device: str, dtype: torch.dtype):
    """(model, processor): LLaVA-1.5-7B's shape, random weights; ``layers`` / ``vision_layers`` of its 32 / 24."""
    tokenizer = real_tokenizer("metaspace", ["<image>"])
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=vision_layers, num_attention_heads=16,
                              image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=768)
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE), tokenizer=tokenizer,
        patch_size=PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA15_TEMPLATE)
    return model, processor


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=60, help="shapes-world scenes; their samples are recorded, fitted on and evaluated")
    p.add_argument("--task", default="mix", help="the scenes' samples: mix (captions, narratives and expressions: ~8 a scene) or caption (one)")
    p.add_argument("--layers", type=int, default=32, help="Llama layers (7B: 32)")
    p.add_argument("--vision-layers", type=int, default=24, help="CLIP layers (ViT-L: 24)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--batch-size", type=int, default=4, help="samples per LMM forward while recording")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--refiner", choices=["none", "organism"], default="none", help="fit the SAM refiner with the organism's SAM")
    p.add_argument("--out", type=Path, help="write the JSON here")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    model, processor = llava15_7b(args.layers, args.vision_layers, args.device, dtype)
    backbone = load_backbone(model, processor)
    data = ShapesGrounding("train", args.scenes, args.task)
    sam = None
    if args.refiner == "organism":
        from flmm_probe.organism import load_organism_sam

        sam = load_organism_sam()
    out = {"device": args.device, "dtype": args.dtype, "layers": args.layers, "vision_layers": args.vision_layers,
           "scenes": args.scenes, "task": args.task, "torch": torch.__version__, "machine": platform.machine(),
           "gpu": torch.cuda.get_device_name() if cuda else None}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        store = Store.create(work / "store", {"backbone": "llava-1.5-7b-shaped"})
        start = time.perf_counter()
        report = record_dataset(backbone, data, store, batch_size=args.batch_size, progress=False)
        store.consolidate()
        seconds = time.perf_counter() - start
        out["record"] = {"samples_per_second": report.recorded / seconds, "seconds": seconds, **report.as_dict(),
                         "store_bytes_per_phrase": store.bytes_per_phrase()}
        config = FitConfig(epochs=args.epochs, use_refiner=sam is not None, device=args.device)
        start = time.perf_counter()
        run = fit(store, data, sam, config, work / "fit", progress=False)
        seconds = time.perf_counter() - start
        out["fit"] = {"samples_per_second": report.recorded * args.epochs / seconds, "seconds": seconds}
        start = time.perf_counter()
        per_phrase, summary = evaluate(load_grounder(run, sam, device=args.device), store, data, progress=False)
        seconds = time.perf_counter() - start
        out["evaluate"] = {"samples_per_second": report.recorded / seconds, "seconds": seconds, "phrases": len(per_phrase)}
    if cuda:
        out["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
    text = json.dumps(out, indent=1, default=float)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return out


if __name__ == "__main__":
    main()
