"""Work split over the processes of a torchrun job, for the jobs that end in one result (analyze, evaluate, fit).

Under torchrun (WORLD_SIZE > 1) a job joins the default process group (NCCL where CUDA is available, else
gloo), takes every world-th item (``share``), and its pieces are gathered so that every rank holds the whole
result (``gather``, ``total``); rank 0 writes it. Outside torchrun the one process does everything.
`record` needs none of this: each rank writes its own shards (store.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


def join() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; joins the process group when world_size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world


def share(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's items: every ``world``-th from ``rank`` on."""
    return list(items[rank::world])


def gather(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` for one process."""
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def total(array: np.ndarray, world: int) -> np.ndarray:
    """The elementwise sum of every rank's ``array`` (same shape on every rank)."""
    return np.sum(gather(np.asarray(array), world), axis=0)


__all__ = ["gather", "join", "share", "total"]
