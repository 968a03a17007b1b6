"""The probe against eager attention on every tiny test backbone, on a device, in float32 and bfloat16.

A report, not a test: nothing is asserted. For each family the tests build (tests/tiny*.py with the samples
of tests/test_backbone_*.py, and the text-only Llama of tests/test_probe.py), built as the tests build it
(seed 0), moved to --device in each dtype, and for a single sample plus a left- and a right-padded batch of
two, as tests/checks.py `check_backbone_against_eager` feeds them, it records:
    max_abs_diff    probe weights vs eager output_attentions at the same rows and columns, where the probe
                    wraps the model's own implementation (SDPA mostly) and eager runs a second forward pass
                    (the tests' check; in bfloat16 it also measures how far the two passes drift apart);
    same_pass_diff  the same, with the probe wrapping eager inside the output_attentions pass itself, so both
                    read the same queries and keys: the probe's own error (0 in float32; in bfloat16 eager
                    rounds its scores and weights to bfloat16 where the probe keeps float32);
    logits_equal    the logits with the probe attached are bit-identical (torch.equal) to those without
                    (plain_rerun_equal: the control, two passes without the probe);
    params_unchanged, impl_restored, all_recorded: the model is left as it was, every layer was recorded.
Each family's row takes the worst of its three cases (the JSON also keeps each case); an exception is recorded
as that family's error, and the other families still run.

    python benchmarks/cuda_exactness.py --device cuda --out $OUT/cuda_exactness.json
    OMP_NUM_THREADS=1 python benchmarks/cuda_exactness.py --device cpu --threads 1 --out /tmp/exactness_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

# The tests' helper modules import each other as top-level modules (pytest puts tests/ on the path); the repo
# root makes flmm_probe importable where it is not installed.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import test_backbone_deepseek_vl  # noqa: E402
import test_backbone_gemma3  # noqa: E402
import test_backbone_idefics3  # noqa: E402
import test_backbone_internvl  # noqa: E402
import test_backbone_llava  # noqa: E402
import test_backbone_llava_next  # noqa: E402
import test_backbone_paligemma  # noqa: E402
import test_backbone_qwen_vl  # noqa: E402
from checks import implementations, parameter_hash  # noqa: E402
from test_probe import tiny_llama  # noqa: E402
from tiny import tiny_llava  # noqa: E402
from tiny_deepseek_vl import tiny_deepseek_vl  # noqa: E402
from tiny_gemma3 import tiny_gemma3  # noqa: E402
from tiny_internvl import tiny_internvl  # noqa: E402
from tiny_paligemma import tiny_paligemma  # noqa: E402
from tiny_qwen_vl import tiny_qwen_vl  # noqa: E402

from flmm_probe import load_backbone  # noqa: E402
from flmm_probe.backbones.base import pad_rows  # noqa: E402
from flmm_probe.probe import AttentionProbe  # noqa: E402

# family -> (builder of (model, processor), the samples its tests feed)
FAMILIES: dict[str, tuple[Callable, list]] = {
    "llava": (tiny_llava, test_backbone_llava.SAMPLES),
    **{f: (b, test_backbone_llava_next.SAMPLES) for f, b in test_backbone_llava_next.BUILDERS.items()},
    **{f: (b, test_backbone_idefics3.SAMPLES) for f, b in test_backbone_idefics3.BUILDERS.items()},
    "internvl": (tiny_internvl, test_backbone_internvl.SAMPLES),
    "deepseek_vl": (tiny_deepseek_vl, test_backbone_deepseek_vl.SAMPLES),
    "gemma3": (tiny_gemma3, test_backbone_gemma3.SAMPLES),
    "paligemma": (lambda: tiny_paligemma(1), test_backbone_paligemma.SAMPLES),
    "paligemma2": (lambda: tiny_paligemma(2), test_backbone_paligemma.SAMPLES),
    **{t: (lambda t=t: tiny_qwen_vl(t), test_backbone_qwen_vl.SAMPLES) for t in test_backbone_qwen_vl.MODEL_TYPES},
}
TEXT_FAMILY = "llama_text"  # test_probe's text-only Llama (GQA), with its left-padded batch
CASES = ("single", "left", "right")


def cases(family: str, model, processor) -> dict[str, tuple[dict, torch.Tensor, torch.Tensor]]:
    """{case: (model inputs on the CPU, query positions, key positions)}: every phrase token as a query,
    every image token of the layout as a key, as check_backbone_against_eager asks."""
    if family == TEXT_FAMILY:
        torch.manual_seed(0)
        ids = torch.randint(0, 50, (2, 20))
        mask = torch.ones(2, 20, dtype=torch.long)
        mask[1, :5] = 0  # left padding on the second row
        keys = torch.stack([torch.arange(2, 10), torch.arange(6, 14)])
        return {"single": ({"input_ids": ids[:1]}, torch.tensor([[3, 9, 15]]), torch.arange(16)[None]),
                "left": ({"input_ids": ids, "attention_mask": mask}, torch.tensor([[12, 15, 19], [10, 11, 19]]), keys)}
    samples = FAMILIES[family][1]
    out = {}
    for case in CASES:
        processor.tokenizer.padding_side = "left" if case == "single" else case
        backbone = load_backbone(model, processor)
        images, texts, phrases = zip(*(samples[:1] if case == "single" else samples))
        prep = backbone.prepare(images, texts, phrases)
        queries = pad_rows([torch.cat(t).unique() for t in prep.tokens])
        keys = pad_rows([layout.key_positions for layout in prep.layouts])
        out[case] = (backbone.model_inputs(prep.inputs), queries, keys)
    return out


def _rows_cols(attentions: tuple[torch.Tensor, ...], queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Eager's (batch, layer, head, query, key) float32 at the probe's rows and columns."""
    stacked = torch.stack(attentions, dim=1).float()  # (batch, layer, head, T, T)
    queries, keys = queries.to(stacked.device), keys.to(stacked.device)
    return torch.stack([stacked[b][:, :, queries[b]][:, :, :, keys[b]] for b in range(stacked.shape[0])])


@torch.no_grad()
def measure(model, inputs: dict, queries: torch.Tensor, keys: torch.Tensor) -> dict:
    """check_probe_against_eager's quantities, measured instead of asserted."""
    before_params, before_impl = parameter_hash(model), implementations(model)
    plain = model(**inputs, use_cache=False).logits
    with AttentionProbe(model, queries, keys) as probe:
        probed = model(**inputs, use_cache=False).logits
    # The control: were a device's kernels not deterministic, logits would differ without the probe too.
    again = model(**inputs, use_cache=False).logits
    result = {"logits_equal": torch.equal(plain, probed), "plain_rerun_equal": torch.equal(plain, again),
              "logits_max_abs_diff": (plain.float() - probed.float()).abs().max().item(),
              "all_recorded": bool(probe.recorded.all()), "impl_restored": implementations(model) == before_impl}
    own = model.config.get_text_config()._attn_implementation
    model.set_attn_implementation("eager")
    try:
        eager = model(**inputs, use_cache=False, output_attentions=True)
        diff = (_rows_cols(eager.attentions, queries, keys) - probe.weights).abs()
        # The probe wrapping eager inside the output_attentions pass: both read the very same q and k.
        with AttentionProbe(model, queries, keys) as same:
            eager = model(**inputs, use_cache=False, output_attentions=True)
        same_diff = (_rows_cols(eager.attentions, queries, keys) - same.weights).abs()
    finally:
        model.set_attn_implementation(own)
    result.update(max_abs_diff=diff.max().item(), max_abs_diff_per_layer=diff.amax(dim=(0, 2, 3, 4)).tolist(),
                  same_pass_diff=same_diff.max().item(), params_unchanged=parameter_hash(model) == before_params)
    return result


def run_family(family: str, dtype: torch.dtype, device: str) -> dict:
    """The worst over the family's cases (largest differences, any False), with each case kept."""
    model, processor = (tiny_llama(), None) if family == TEXT_FAMILY else FAMILIES[family][0]()
    model = model.to(device=device, dtype=dtype)
    per_case = {}
    for case, (inputs, queries, keys) in cases(family, model, processor).items():
        # As Backbone.record feeds them: on the model's device, pixel values left in float32 (the towers cast).
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        per_case[case] = measure(model, inputs, queries, keys)
    values = list(per_case.values())
    row = {k: max(v[k] for v in values) for k in ("max_abs_diff", "same_pass_diff", "logits_max_abs_diff")}
    flags = ("logits_equal", "plain_rerun_equal", "params_unchanged", "impl_restored", "all_recorded")
    row.update({k: all(v[k] for v in values) for k in flags})
    return {**row, "cases": per_case}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16"],
                        default=["float32", "bfloat16"])
    parser.add_argument("--families", nargs="+", choices=[TEXT_FAMILY, *FAMILIES], default=[TEXT_FAMILY, *FAMILIES],
                        metavar="FAMILY", help=f"default: all of {TEXT_FAMILY}, {', '.join(FAMILIES)}")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.device(args.device).type == "cuda"
    report: dict = {
        "device": args.device, "gpu": torch.cuda.get_device_name(args.device) if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": __import__("transformers").__version__,
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        # TF32 would change float32 results on a GPU (the defaults leave matmuls exact, cuDNN convolutions not).
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "rows": [],
    }
    header = (f"{'family':<16} {'dtype':<9} {'max_abs_diff':>12} {'same_pass':>10} {'logits_eq':>9} {'rerun_eq':>8} "
              f"{'model_ok':>8} {'s':>6}")
    print(header + "\n" + "-" * len(header), flush=True)
    for family in args.families:
        for name in args.dtypes:
            start = time.perf_counter()
            try:
                row = {"family": family, "dtype": name, **run_family(family, getattr(torch, name), args.device)}
                model_ok = row["params_unchanged"] and row["impl_restored"] and row["all_recorded"]
                line = (f"{row['max_abs_diff']:>12.3g} {row['same_pass_diff']:>10.3g} {row['logits_equal']!s:>9} "
                        f"{row['plain_rerun_equal']!s:>8} {model_ok!s:>8}")
            except Exception as err:  # one family failing must not lose the others
                row = {"family": family, "dtype": name, "error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc()}
                line = f"ERROR {row['error'][:100]}"
            row["seconds"] = time.perf_counter() - start
            report["rows"].append(row)
            print(f"{family:<16} {name:<9} {line} {row['seconds']:>6.1f}", flush=True)
            if args.out:  # rewritten after every row, so a run cut short keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
