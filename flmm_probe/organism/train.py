"""Train the organism from a seed: ``flmm-probe organism train`` (or ``python -m flmm_probe.organism.train``).

One loop per model, readable top to bottom. Every LMM variant is trained on fresh procedural train
scenes (no scene is seen twice), with AdamW, linear warm-up and cosine decay, and is saved with
``save_pretrained`` at evenly spaced checkpoints ``<out>/<variant>/step_<n>/`` (step 0 = the untrained
model, for the "grounding vs training step" analyses) and at the end in ``<out>/<variant>/final/``.
SAM is trained the same way (``sam.py``) and saved as safetensors + JSON config.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from operator import attrgetter
from pathlib import Path

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm
from transformers import LlavaForConditionalGeneration

from flmm_probe.data.shapes import IMAGE_SIZE, make_scene
from flmm_probe.organism.build import VARIANTS, SamConfig, build_lmm, build_processor, build_sam
from flmm_probe.organism.scores import teacher_forced_accuracy
from flmm_probe.organism.sam import load_saved_sam, sam_loss_on_batch, save_sam, saved_sam_config
from flmm_probe.organism.text import DESCRIPTIONS, LISTING_ORDERS, REFERRABLE_KINDS, TextRecipe, collate, conversation, encode
from flmm_probe.organism.vision import optimizer_step, pretrain_vision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """One LMM variant's training from its seed: vision pretraining for ``vision_steps`` steps, then ``lmm_steps``
    LLaVA steps at peak learning rate ``lr`` on conversations as ``text`` says (``text.TextRecipe``).
    ``rank_target``: vision pretraining also teaches each object patch its owner's rank left to right
    (``vision.RANK``): off for both shipped variants, as with it a model finds "the k-th object listed" by rank
    instead of by the words that name it."""

    seed: int
    lmm_steps: int
    vision_steps: int
    lr: float
    text: TextRecipe
    rank_target: bool = False


# The shipped models were trained with exactly these (docs/organism.md, "Recipe"). Both: grounded expressions
# (an expression's own last token must find its referent, text.grounded_expression), listings led by shape or
# colour ("cross red large", "red cross large": each object's other words found by the word just said), and
# reasoning questions answered by naming an object. Vision pretraining is longest for `coarse`, whose 16-pixel
# patches make shape the slowest attribute to tell apart. `small` also shuffles its inventories, leads with
# captions, and asks count questions about shapes the scene has; `coarse` learns its question skills (late,
# sudden transitions) more reliably at half the learning rate.
RECIPES: dict[str, Recipe] = {
    "small": Recipe(seed=1, lmm_steps=3400, vision_steps=3500, lr=1e-3, text=TextRecipe(
        grounded_expressions=True, shuffle_inventory=True, object_listings=0.5, listing_leads=("shape", "colour"),
        descriptions={"caption": 0.6, "narrative": 0.1, "expression": 0.25, "inventory": 0.05},
        count_questions=0.3, reasoning=0.25)),
    "coarse": Recipe(seed=1, lmm_steps=3000, vision_steps=4000, lr=5e-4, text=TextRecipe(
        grounded_expressions=True, object_listings=0.5, listing_leads=("shape", "colour"), reasoning=0.25)),
}
SAM_SEED = 0
VISION_LR = 2e-3
# The pretrained tower stays frozen in LLaVA training, as LLaVA keeps CLIP frozen (a value > 0 trains it at
# that fraction of the LMM learning rate); frozen, a step also costs less.
VISION_LR_SCALE = 0.0
# The LLaVA stage's forward pass in float32, as the shipped models were trained, or under bfloat16 autocast
# (as LLaVA itself trains; benchmarks/organism_step.py measures both).
AUTOCAST = "float32"
SAM_STEPS = 1900
BATCH = 32
SAM_BATCH = 6
# Question skills come as late, sudden transitions; `coarse` learns them more reliably at 5e-4.
LR = {"small": 1e-3, "coarse": 5e-4}
SAM_LR = 1e-3
WARMUP = 150
CHECKPOINTS = 8
EVAL_EVERY = 250  # log teacher-forced accuracy on EVAL_SCENES val scenes every so many steps
EVAL_SCENES = 48


def environment() -> dict:
    """What a bit-for-bit reproduction needs besides the seed: the same library builds and thread count
    (another torch build, or another thread count for vision pretraining and SAM, gives other bits)."""
    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "threads": torch.get_num_threads()}


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``lr / 10``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def checkpoint_steps(steps: int, n: int) -> set[int]:
    """Step 0 and ``n`` evenly spaced steps up to ``steps``."""
    return {0} | {round(steps * (k + 1) / n) for k in range(n)}


def text_recipe(variant: str, **options) -> TextRecipe:
    """``variant``'s training text (``RECIPES``), with each option given (not None) in its default's place."""
    unknown = set(options) - {f.name for f in fields(TextRecipe)}
    if unknown:
        raise TypeError(f"text_recipe() got options it does not know: {sorted(unknown)}")
    given = {k: tuple(v) if k in ("listing_leads", "referring_kinds") else v for k, v in options.items() if v is not None}
    if given.get("grounded_expressions") is False:  # what changes grounded expressions goes with them unless asked for
        for option in ("ranked_expressions", "located_expressions"):
            given.setdefault(option, False)
    return replace(RECIPES[variant].text, **given)


def lmm_batch(step: int, batch: int, seed: int, processor, n_image_tokens: int,
              recipe: TextRecipe | None = None) -> dict[str, torch.Tensor]:
    """A training batch from train scenes ``step * batch ...`` (each drawn with decoys with probability
    ``recipe.decoy_scenes``), texts as ``recipe`` says; pixel_values: (batch, 3, H, W)."""
    rng = np.random.default_rng([seed, step])
    recipe = recipe or TextRecipe()
    decoys = (np.random.default_rng([seed, step, 1]).random(batch) < recipe.decoy_scenes if recipe.decoy_scenes > 0
              else np.zeros(batch, bool))
    scenes = [make_scene("train", step * batch + i, seed, bool(d)) for i, d in enumerate(decoys)]
    samples = [encode(conversation(s, rng, recipe), processor.tokenizer, n_image_tokens) for s in scenes]
    out = collate(samples, processor.tokenizer.pad_token_id)
    out["pixel_values"] = processor.image_processor(images=[s.image for s in scenes], return_tensors="pt")["pixel_values"]
    return out


def train_lmm(variant: str, out: Path, steps: int | None = None, batch: int = BATCH, lr: float | None = None, seed: int | None = None,
              checkpoints: int = CHECKPOINTS, vision_steps: int | None = None, init: Path | None = None,
              vision_lr_scale: float = VISION_LR_SCALE, device: str = "cpu", recipe: TextRecipe | None = None,
              rank_target: bool | None = None, autocast: str = AUTOCAST, threads: Callable[[], int] | None = None) -> Path:
    """Train one variant from scratch (vision pretraining, then LLaVA); returns the ``final`` folder.

    ``init``: a saved organism to continue from instead (no vision pretraining; a new schedule of
    ``steps`` steps on train scenes after those its earlier stages used). ``device``: where the model
    trains (scenes are always made on the CPU); the shipped models were trained on the CPU.
    ``recipe``: what the training conversations say (``text.TextRecipe``; ``text_recipe(variant, ...)`` makes
    one from the variant's defaults). ``rank_target``: vision pretraining also tells each object patch its
    owner's left-to-right rank (``vision.RANK``). ``autocast``: "bfloat16" runs the LLaVA stage's forward
    pass under bfloat16 autocast, "float32" without.
    ``threads``: asked before each LLaVA step, the torch CPU threads to step with (``main --share-threads`` hands
    a finished job's threads to the jobs still running); a change of thread count is recorded in
    ``threads_from_step``, as the steps compute the same bits on one thread and on two on some machines only.
    ``None`` (steps, lr, seed, recipe, rank_target): the variant's default.
    """
    cfg, default = VARIANTS[variant], RECIPES[variant]
    steps = default.lmm_steps if steps is None else steps
    lr = default.lr if lr is None else lr
    seed = default.seed if seed is None else seed
    recipe = default.text if recipe is None else recipe
    vision_steps = default.vision_steps if vision_steps is None else vision_steps
    asked_rank_target, rank_target = rank_target, default.rank_target if rank_target is None else rank_target
    torch.manual_seed(seed)
    processor = build_processor(cfg.patch)
    n_image_tokens = (IMAGE_SIZE // cfg.patch) ** 2
    first = 0  # optimisation steps of earlier stages: their scenes are not reused
    if init is None:
        model = build_lmm(cfg, processor.tokenizer).to(device)
        vision_accuracy = pretrain_vision(model.model.vision_tower, processor.image_processor, cfg.patch, vision_steps,
                                          batch, VISION_LR, seed, rank_target)
    else:
        model = LlavaForConditionalGeneration.from_pretrained(init, dtype=torch.float32).to(device)
        earlier = json.loads((init / "training.json").read_text())
        first = earlier.get("first_step", 0) + earlier["step"]
        vision_accuracy, vision_steps = None, 0
        # The rank target shapes vision pretraining, which a continuation skips: record the tower's own.
        if asked_rank_target is not None and asked_rank_target != earlier.get("rank_target", False):
            raise ValueError(f"--init continues {init}, whose tower was pretrained with rank_target="
                             f"{earlier.get('rank_target', False)}; drop --rank-target/--no-rank-target or train from scratch.")
        rank_target = earlier.get("rank_target", False)
    tower = list(model.model.vision_tower.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower.")]
    groups = [{"params": rest, "scale": 1.0}]
    if vision_lr_scale > 0:
        groups.append({"params": tower, "scale": vision_lr_scale})
    else:  # as LLaVA keeps CLIP frozen; no gradient through the tower also makes a step cheaper
        model.model.vision_tower.requires_grad_(False)
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    run = out / variant
    save_at = checkpoint_steps(steps, checkpoints)
    meta = {"variant": variant, "config": asdict(cfg), "steps": steps, "batch": batch, "lr": lr, "seed": seed,
            "vision_steps": vision_steps, "vision_object_patch_accuracy": vision_accuracy, "vision_lr_scale": vision_lr_scale,
            "first_step": first, **asdict(recipe), "rank_target": rank_target, "autocast": autocast,
            "init": None if init is None else str(init), "environment": environment(), "threads_from_step": {}}
    val_scenes = [make_scene("val", i, seed) for i in range(EVAL_SCENES)]
    curve: list[dict] = []
    start = time.time()
    bar = tqdm(range(steps + 1), desc=f"organism {variant}", disable=None)
    for step in bar:
        if step in save_at:
            _save_lmm(model, processor, run / f"step_{step:05d}", {**meta, "step": step, "seconds": time.time() - start})
        if step == steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, WARMUP) * group["scale"]
        if threads is not None and (n := threads()) != torch.get_num_threads():
            torch.set_num_threads(n)
            meta["threads_from_step"][step] = torch.get_num_threads()
            log.info("%s step %d: now on %d threads", variant, step, torch.get_num_threads())
        model.train()
        inputs = lmm_batch(first + step, batch, seed, processor, n_image_tokens, recipe)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast == "bfloat16"):
            loss = model(**{k: v.to(device) for k, v in inputs.items()}).loss
        optimizer_step(loss, opt, [p for group in groups for p in group["params"]])
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 50 == 0:
            log.info("%s step %d loss %.4f (%.0fs)", variant, step, loss.item(), time.time() - start)
        if (step + 1) % EVAL_EVERY == 0:
            curve.append({"step": step + 1, **teacher_forced_accuracy(model.eval(), processor, val_scenes)})
            log.info("%s step %d val %s", variant, step + 1, {k: round(v, 3) for k, v in curve[-1].items()})
    meta["val_curve"] = curve
    final = run / "final"
    _save_lmm(model, processor, final, {**meta, "step": steps, "seconds": time.time() - start})
    return final


def _save_lmm(model, processor, path: Path, meta: dict) -> None:
    copy.deepcopy(model).eval().to(torch.float16).save_pretrained(path)
    processor.save_pretrained(path)
    (path / "training.json").write_text(json.dumps(meta, indent=1))


def train_sam(out: Path, steps: int = SAM_STEPS, batch: int = SAM_BATCH, lr: float = SAM_LR, seed: int = SAM_SEED,
              init: Path | None = None, cfg: SamConfig | None = None) -> Path:
    """Train the organism SAM on promptable segmentation; returns its folder.

    ``init``: a saved SAM to continue from (a second stage with its own schedule, on new scenes).
    ``cfg``: the sizes of a SAM trained from scratch (default ``SamConfig()``).
    """
    if init is not None:
        cfg = saved_sam_config(init)
    elif cfg is None:
        cfg = SamConfig()
    torch.manual_seed(seed)
    sam = build_sam(cfg) if init is None else load_saved_sam(init)
    history = [] if init is None else json.loads((init / "config.json").read_text())["training"]["stages"]
    first = sum(stage["steps"] * stage["batch"] for stage in history)  # scenes used by earlier stages
    sam.train()
    opt = torch.optim.AdamW(sam.parameters(), lr=lr, weight_decay=0.01)
    start = time.time()
    bar = tqdm(range(steps), desc="organism sam", disable=None)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, WARMUP)
        rng = np.random.default_rng([seed, first + step, 1])
        scenes = [make_scene("train", first + step * batch + i, seed + 1) for i in range(batch)]
        loss = sam_loss_on_batch(sam, scenes, rng)
        optimizer_step(loss, opt, sam.parameters())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 50 == 0:
            log.info("sam step %d loss %.4f (%.0fs)", step, loss.item(), time.time() - start)
    path = out / "sam"
    stage = {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "seconds": time.time() - start,
             "environment": environment()}
    save_sam(sam, cfg, path, {"stages": history + [stage]})
    return path


# In a worker of ``main``'s pool: how many of the run's jobs have not finished (running or waiting).
_unfinished = None


def _worker_init(unfinished) -> None:
    global _unfinished
    _unfinished = unfinished


def shared_threads(threads: int, jobs: int, unfinished: int) -> int:
    """A job's threads once fewer than ``jobs`` jobs are left: the finished jobs' threads are shared out."""
    return threads * jobs // max(1, min(jobs, unfinished))


def _job(name: str, args: argparse.Namespace) -> Path:
    """Train one model (an LMM variant, or "sam") as ``main``'s arguments say; runs in a worker process."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(message)s")
    # Training progress is always logged, also in-process under `flmm-probe`, whose root logger is at WARNING.
    logging.getLogger("flmm_probe.organism").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    try:
        if name == "sam":  # SAM's arithmetic does depend on the thread count: it keeps its own
            return train_sam(args.out, args.sam_steps, args.sam_batch, SAM_LR, SAM_SEED if args.seed is None else args.seed,
                             args.sam_init)
        threads = None if _unfinished is None or not args.share_threads else \
            lambda: shared_threads(args.threads, args.jobs, _unfinished.value)
        recipe = text_recipe(name, **{f.name: getattr(args, f.name) for f in fields(TextRecipe)})
        return train_lmm(name, args.out, args.steps, args.batch, args.lr, args.seed, args.checkpoints, args.vision_steps,
                         args.init, args.vision_lr_scale, args.device, recipe, args.rank_target, args.autocast, threads)
    finally:
        if _unfinished is not None:
            with _unfinished.get_lock():
                _unfinished.value -= 1


def _per_variant(attribute: str) -> str:
    """"small: 3400, coarse: 3000": a ``Recipe`` attribute (dotted: "text.reasoning") of each variant, for --help."""
    values = {v: attrgetter(attribute)(recipe) for v, recipe in RECIPES.items()}
    return ", ".join(f"{v}: {list(x) if isinstance(x, tuple) else x}" for v, x in values.items())


def _probability(text: str) -> float:
    """A number in [0, 1], for the options that are probabilities (``--object-listings``, ...)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"P must be a number between 0 and 1 (got {text!r})") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"P is a probability, between 0 and 1 (got {value})")
    return value


def _description_share(item: str) -> tuple[str, float]:
    """``"expression=0.3"`` -> ("expression", 0.3), for ``--descriptions``."""
    kind, _, share = item.partition("=")
    if kind not in DESCRIPTIONS:
        raise argparse.ArgumentTypeError(f"{item!r}: the kinds are {', '.join(DESCRIPTIONS)}, each as KIND=P")
    try:
        return kind, float(share)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{item!r}: P must be a number, e.g. {kind}=0.3") from None


def _description_mix(shares: list[tuple[str, float]], parser: argparse.ArgumentParser) -> dict[str, float]:
    """Every kind once, probabilities summing to 1, in ``DESCRIPTIONS``' order (the draws depend on it)."""
    given = dict(shares)
    if len(given) != len(shares) or set(given) != set(DESCRIPTIONS) or any(v < 0 for v in given.values()) \
            or abs(sum(given.values()) - 1) > 1e-6:
        parser.error(f"--descriptions: give each of {', '.join(DESCRIPTIONS)} once, as KIND=P with P >= 0 and "
                     f"the P summing to 1 (got {' '.join(f'{k}={v}' for k, v in shares)})")
    return {kind: given[kind] for kind in DESCRIPTIONS}


def main(argv: list[str] | None = None) -> int:
    """``flmm-probe organism train``: train the LMM variants and SAM from a seed."""
    p = argparse.ArgumentParser(prog="flmm-probe organism train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/organism"), help="run folder (checkpoints + finals)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=None, help=f"LMM optimisation steps per variant (default {_per_variant('lmm_steps')})")
    p.add_argument("--vision-steps", type=int, default=None,
                   help=f"vision-tower pretraining steps per variant (default {_per_variant('vision_steps')})")
    p.add_argument("--vision-lr-scale", type=float, default=VISION_LR_SCALE,
                   help="LLaVA-stage learning rate of the pretrained vision tower, as a fraction of --lr (0: frozen)")
    p.add_argument("--sam-steps", type=int, default=SAM_STEPS, help="SAM optimisation steps (0: skip SAM)")
    p.add_argument("--init", type=Path, help="continue LMM training from this saved organism folder (one variant)")
    p.add_argument("--sam-init", type=Path, help="continue SAM training from this saved SAM folder")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--sam-batch", type=int, default=SAM_BATCH)
    p.add_argument("--lr", type=float, default=None, help=f"LMM peak learning rate (default per variant {_per_variant('lr')})")
    p.add_argument("--seed", type=int, default=None, help=f"(default per variant {_per_variant('seed')}, SAM {SAM_SEED})")
    p.add_argument("--checkpoints", type=int, default=CHECKPOINTS, help="evenly spaced LMM checkpoints")
    p.add_argument("--jobs", type=int, default=2,
                   help="models trained at once, one process each (small, coarse, sam are independent)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--share-threads", action="store_true",
                   help="once a process has nothing left to train, the LMMs still in their LLaVA stage share out its "
                        "threads: faster, but the weights then reproduce bit for bit only where a step computes the same "
                        "bits on one thread and on two (python benchmarks/thread_exactness.py says whether it does here)")
    p.add_argument("--grounded-expressions", action=argparse.BooleanOptionalAction, default=None,
                   help="follow each training referring expression with its referent's colour and size words that it "
                        "does not say, so that its own tokens must find the referent ("
                        f"default per variant {_per_variant('text.grounded_expressions')})")
    p.add_argument("--ranked-expressions", action=argparse.BooleanOptionalAction, default=None,
                   help="grounded expressions that say both attributes, and relational ones, give their referent's rank "
                        "left to right first ('the large red cross two'), which colour and size cannot replace "
                        f"(default per variant {_per_variant('text.ranked_expressions')})")
    p.add_argument("--rank-target", action=argparse.BooleanOptionalAction, default=None,
                   help="vision pretraining also teaches each object patch its owner's rank left to right (a position "
                        f"cue: words then need not be read to find an object; default per variant {_per_variant('rank_target')})")
    p.add_argument("--relational-expressions", type=_probability, default=None, metavar="P",
                   help="probability that an expression turn about a scene with relational expressions ('the red cross "
                        "left of the blue square') says one of them rather than any of its expressions "
                        f"(default per variant {_per_variant('text.relational_expressions')})")
    p.add_argument("--shuffle-inventory", action=argparse.BooleanOptionalAction, default=None,
                   help="inventories (the answers to 'Please list the objects.') name the objects in a random order, "
                        f"so that each object's colour is found by its shape word (default per variant {_per_variant('text.shuffle_inventory')})")
    p.add_argument("--object-listings", type=_probability, default=None, metavar="P",
                   help="probability that a training caption turn becomes 'what objects can we see?' answered by the objects "
                        "in a random order, each by its shape, colour and size words ('cross red large, circle blue small.'), "
                        f"so that each object's colour is found by its shape word (default per variant {_per_variant('text.object_listings')})")
    p.add_argument("--listing-leads", nargs="+", choices=list(LISTING_ORDERS), default=None, metavar="ATTRIBUTE",
                   help="attributes that may lead a listing's items, each listing drawing one: shape "
                        f"('cross red large'), colour ('red cross large') and/or size ('large red cross') (default per variant {_per_variant('text.listing_leads')})")
    p.add_argument("--located-captions", type=_probability, default=None, metavar="P",
                   help="probability that a training caption turn that is not a listing becomes 'Please list the objects on "
                        "the image.' answered by the caption's phrases in a random order, each followed by where its object is "
                        "('a large red circle left above and ...'): a word only its object decides follows each phrase "
                        f"(default per variant {_per_variant('text.located_captions')})")
    p.add_argument("--located-expressions", action=argparse.BooleanOptionalAction, default=None,
                   help="grounded expressions say where their referent is right after their words ('the largest cross "
                        "left above red large'), which tells it from look-alikes in other halves of the image "
                        f"(default per variant {_per_variant('text.located_expressions')})")
    p.add_argument("--count-questions", type=_probability, default=None, metavar="P",
                   help="probability that a training conversation's last question becomes 'how many crosses are there?' "
                        "about a shape the scene has (the scenes' own count questions mostly answer 'zero'; "
                        f"default per variant {_per_variant('text.count_questions')})")
    p.add_argument("--conjunction-counts", type=_probability, default=None, metavar="P",
                   help="probability that such a count question counts two attributes of a scene's object together "
                        "('how many large red objects are there?'), which no head finding the objects of one attribute "
                        f"gives (default per variant {_per_variant('text.conjunction_counts')})")
    p.add_argument("--decoy-scenes", type=_probability, default=None, metavar="P",
                   help="probability that a training scene is a target among decoys of one other shape, some of its colour "
                        "(other size), some of its size (other colours): after 'a large red' the objects of that colour and "
                        "those of that size name the decoys' shape at least as often as the target's "
                        f"(default per variant {_per_variant('text.decoy_scenes')})")
    p.add_argument("--referring-questions", type=_probability, default=None, metavar="P",
                   help="probability that a training conversation's first question asks what only a referring expression's "
                        "whole meaning decides ('what size is the red cross left of the blue square?'), where the scene "
                        f"has such a question (default per variant {_per_variant('text.referring_questions')})")
    p.add_argument("--referring-kinds", nargs="+", choices=list(REFERRABLE_KINDS), default=None, metavar="KIND",
                   help="the expressions referring questions ask about: relational and/or superlative ('what colour is the "
                        f"largest cross?') (default per variant {_per_variant('text.referring_kinds')})")
    p.add_argument("--reasoning", type=_probability, default=None, metavar="P",
                   help="probability that a training conversation ends with a question answered by naming an object "
                        f"('which object is the largest?' -> 'the large red cross') (default per variant {_per_variant('text.reasoning')})")
    p.add_argument("--descriptions", type=_description_share, nargs="+", default=None, metavar="KIND=P",
                   help=f"probability of each kind of description turn, all of {', '.join(DESCRIPTIONS)} "
                        f"(default per variant {_per_variant('text.descriptions')})")
    p.add_argument("--autocast", choices=["bfloat16", "float32"], default=AUTOCAST,
                   help="the LLaVA stage's forward pass under bfloat16 autocast (steps 12-14%% faster on this project's "
                        "AVX-512 BF16 CPU), or in float32 as the shipped models were trained")
    p.add_argument("--device", default="cpu", help="where the LMMs train, e.g. cuda (SAM and scene making stay on the CPU)")
    args = p.parse_args(argv)
    if args.descriptions is not None:
        args.descriptions = _description_mix(args.descriptions, p)
    for option in ("ranked_expressions", "located_expressions"):
        if getattr(args, option) and args.grounded_expressions is False:
            flag = "--" + option.replace("_", "-")
            p.error(f"{flag} changes the words grounded expressions append: drop --no-grounded-expressions")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = list(args.variants) + (["sam"] if args.sam_steps > 0 else [])
    if args.jobs <= 1 or len(names) <= 1:
        for name in names:
            log.info("%s saved in %s", name, _job(name, args))
        return 0
    # Separate processes rather than threads: on a few cores, one single-threaded process per model
    # trains faster than one model at a time on all cores (small tensors scale poorly across threads: a
    # `small` step took 0.71 s on one thread, 0.43 s on two, on this project's 2-core machine). With
    # --share-threads, once a job ends with none left to start, its threads go to the LMMs still in their
    # LLaVA stage (when each job ends depends on the machine's load: off by default, so that the default
    # command's thread schedule, and so its bits, are fixed).
    # SIGTERM becomes SystemExit so that leaving the `with` block terminates the workers too.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    context = multiprocessing.get_context("spawn")
    unfinished = context.Value("i", len(names))
    try:
        with context.Pool(args.jobs, initializer=_worker_init, initargs=(unfinished,)) as pool:
            for name, path in zip(names, pool.starmap(_job, [(name, args) for name in names], chunksize=1)):
                log.info("%s saved in %s", name, path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
