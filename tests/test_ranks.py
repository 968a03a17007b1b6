"""analyze and evaluate split over two processes (gloo, as under torchrun) give what one process gives."""

import os
import socket

import pandas as pd
import pytest
import torch.multiprocessing as mp

from flmm_probe import ranks
from flmm_probe.cli import main

DATA = "shapes:train:5:mix"  # 5 samples: two ranks get 3 and 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_job(rank: int, world: int, port: int, root: str) -> None:
    """One torchrun-like process: RANK / WORLD_SIZE set, analyze and evaluate through the CLI into rank folders."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        assert main(["analyze", "--store", f"{root}/store", "--data", DATA, "--out", f"{root}/analysis_split"]) == 0
        assert main(["evaluate", "--run", f"{root}/fit", "--store", f"{root}/store", "--data", DATA, "--no-refiner",
                     "--out", f"{root}/evaluate_split"]) == 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    assert main(["record", "--data", DATA, "--store", str(root / "store")]) == 0
    assert main(["fit", "--store", str(root / "store"), "--data", DATA, "--out", str(root / "fit"), "--epochs", "1",
                 "--no-refiner", "--base-channels", "8", "--long-side", "16"]) == 0
    return root


def test_two_ranks_write_what_one_process_writes(recorded):
    root = recorded
    assert main(["analyze", "--store", str(root / "store"), "--data", DATA, "--out", str(root / "analysis_one")]) == 0
    assert main(["evaluate", "--run", str(root / "fit"), "--store", str(root / "store"), "--data", DATA, "--no-refiner",
                 "--out", str(root / "evaluate_one")]) == 0
    mp.spawn(_rank_job, args=(2, _free_port(), str(root)), nprocs=2, join=True)
    for name in ("scores", "baselines", "heads", "head_table"):
        pd.testing.assert_frame_equal(pd.read_parquet(root / "analysis_split" / f"{name}.parquet"),
                                      pd.read_parquet(root / "analysis_one" / f"{name}.parquet"), obj=name)
    assert (root / "analysis_split" / "coverage.json").read_text() == (root / "analysis_one" / "coverage.json").read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(root / "evaluate_split" / "per_phrase.parquet"),
                                  pd.read_parquet(root / "evaluate_one" / "per_phrase.parquet"))
    assert (root / "evaluate_split" / "metrics.json").read_text() == (root / "evaluate_one" / "metrics.json").read_text()


def test_shares_cover_every_item_once():
    items = list(range(7))
    parts = [ranks.share(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4]
    assert ranks.gather("x", 1) == ["x"] and ranks.total([1, 2], 1).tolist() == [1, 2]
