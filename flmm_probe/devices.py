"""Where a process puts its model: one GPU per rank under torchrun, or a share of the GPUs for a model too large for one.

    kwargs = placement(os.environ, gpu_memory, device_map=None)   # gpu_memory: bytes of each visible GPU
    model = AutoModelForImageTextToText.from_pretrained(model_id, **kwargs)

torchrun (and accelerate) set LOCAL_RANK and LOCAL_WORLD_SIZE for each process of a node. With CUDA and no
device map, rank r's whole model goes to ``cuda:LOCAL_RANK``. With ``device_map="auto"`` (a model larger
than one GPU), the node's GPUs are split evenly between its ranks and each rank's model is spread over its
own share only: on 8 GPUs with 4 ranks per node, rank 1 uses GPUs 2 and 3. Without CUDA, everything stays
on the CPU. Outside torchrun a device map is passed on as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def local_rank(environ: Mapping[str, str]) -> tuple[int, int]:
    """(LOCAL_RANK, LOCAL_WORLD_SIZE) of this process; (0, 1) outside a launcher."""
    return int(environ.get("LOCAL_RANK", 0)), int(environ.get("LOCAL_WORLD_SIZE", environ.get("WORLD_SIZE", 1)))


def rank_device(environ: Mapping[str, str], cuda_available: bool) -> str:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` with CUDA, else ``cpu``."""
    return f"cuda:{local_rank(environ)[0]}" if cuda_available else "cpu"


def rank_gpus(environ: Mapping[str, str], device_count: int) -> list[int]:
    """The GPUs of this rank's share when the node's ``device_count`` GPUs are split evenly between its ranks."""
    rank, ranks = local_rank(environ)
    if device_count < ranks:
        raise ValueError(f"{ranks} ranks on a node with {device_count} GPUs: give each rank at least one GPU "
                         "(--nproc_per_node at most the number of GPUs).")
    share = device_count // ranks
    return list(range(rank * share, (rank + 1) * share))


def placement(environ: Mapping[str, str], gpu_memory: Sequence[int], device_map: str | None = None) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments that place this rank's model (see the module docstring).

    ``gpu_memory``: the bytes of each visible GPU (empty without CUDA), e.g.
    ``[torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]``.
    """
    if not gpu_memory:
        return {"device_map": device_map} if device_map else {}
    if device_map is None:
        return {"device_map": {"": rank_device(environ, True)}}
    if device_map == "auto" and "LOCAL_RANK" in environ:
        # Only the GPUs listed in max_memory take part in the automatic map: this rank's share.
        return {"device_map": "auto", "max_memory": {i: gpu_memory[i] for i in rank_gpus(environ, len(gpu_memory))}}
    return {"device_map": device_map}
