"""Probe vs plain SDPA vs eager + output_attentions: time and peak memory, side by side in one run.

A Llama-style decoder (hidden 512, 12 layers, 16 heads, 4 KV heads by default) reads N image tokens
followed by ~60 text tokens; the probe records every text token's attention to every image token (all
layers and heads), which is what a dense phrase set costs. The decoder runs without its LM head (F-LMM needs
no logits), so the vocabulary projection does not dilute the comparison.

Time: median over interleaved repeats (sdpa, probe, eager, sdpa, probe, eager, ...), so that machine noise
hits the three alike. Memory: the rise of the process's peak RSS over one forward pass, each method in a
fresh subprocess, peak RSS reset after the model is built (on a GPU: torch.cuda.max_memory_allocated rise).

    python benchmarks/probe_speed.py --image-tokens 576 2880 --repeats 5 --out docs/probe_speed.json
    python benchmarks/probe_speed.py --shape 7b --device cuda --dtype bfloat16   # the real 7B shape
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaModel

from flmm_probe.probe import AttentionProbe

SHAPES = {
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=4),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
}
METHODS = ("sdpa", "probe", "eager")
TEXT_TOKENS = 60


def build(shape: str, image_tokens: int, device: str, dtype: torch.dtype):
    """(model, input_ids, query_positions, key_positions) for one image block followed by the text."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, **SHAPES[shape])
    # Built in place, on the device and in the dtype (transformers sets the default dtype while it builds):
    # building the 7B shape in float32 on the CPU first takes ~26 GB and minutes. As from_pretrained does,
    # this leaves the RoPE inverse frequencies in float32.
    with torch.device(device):
        model = LlamaModel._from_config(config, dtype=dtype).eval()
    length = 1 + image_tokens + TEXT_TOKENS
    ids = torch.randint(0, 1000, (1, length), device=device)
    keys = torch.arange(1, 1 + image_tokens, device=device)[None]
    queries = torch.arange(1 + image_tokens, length, device=device)[None]
    return model, ids, queries, keys


@torch.no_grad()
def run(method: str, model: LlamaModel, ids: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> None:
    if method == "sdpa":
        model(input_ids=ids, use_cache=False)
    elif method == "probe":
        with AttentionProbe(model, queries, keys):
            model(input_ids=ids, use_cache=False)
    else:
        model.set_attn_implementation("eager")
        try:
            out = model(input_ids=ids, use_cache=False, output_attentions=True)
            # What an eager-based tool keeps: the phrase rows x image columns of every layer.
            torch.stack([a[:, :, queries[0]][..., keys[0]] for a in out.attentions], 1)
        finally:
            model.set_attn_implementation("sdpa")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_methods(args: argparse.Namespace, image_tokens: int) -> dict[str, float]:
    dtype = getattr(torch, args.dtype)
    model, ids, queries, keys = build(args.shape, image_tokens, args.device, dtype)
    for method in METHODS:  # warm-up
        run(method, model, ids, queries, keys)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for method in METHODS:
            sync(args.device)
            start = time.perf_counter()
            run(method, model, ids, queries, keys)
            sync(args.device)
            times[method].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def peak_rise(args: argparse.Namespace, method: str, image_tokens: int) -> float:
    """Peak memory rise (MiB) of one forward pass, measured in a fresh process."""
    command = [
        sys.executable, __file__, "--memory-child", method, "--image-tokens", str(image_tokens),
        "--shape", args.shape, "--device", args.device, "--dtype", args.dtype,
    ]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip())


def memory_child(args: argparse.Namespace) -> None:
    dtype = getattr(torch, args.dtype)
    model, ids, queries, keys = build(args.shape, args.image_tokens[0], args.device, dtype)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run(args.memory_child, model, ids, queries, keys)
        torch.cuda.synchronize()
        rise = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        # Reset the kernel's peak-RSS mark (Linux: clear_refs 5), so model building does not count.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        run(args.memory_child, model, ids, queries, keys)
        rise = (_status_kib("VmHWM") - before) / 2**10
    print(rise)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-tokens", type=int, nargs="+", default=[576, 2880])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--memory-child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args)
        return
    rows = []
    for n in args.image_tokens:
        seconds = time_methods(args, n)
        memory = {m: peak_rise(args, m, n) for m in METHODS}
        row = {
            "image_tokens": n, "text_tokens": TEXT_TOKENS, "seconds": seconds, "peak_rise_mib": memory,
            "probe_vs_sdpa_time": seconds["probe"] / seconds["sdpa"],
            "eager_vs_probe_time": seconds["eager"] / seconds["probe"],
            "eager_vs_probe_memory": memory["eager"] / memory["probe"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "shape": args.shape, "device": args.device, "dtype": args.dtype, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None, "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
