"""Each rank's model placement, as a function of the launcher's environment and the GPUs present."""

import pytest

from flmm_probe.devices import placement, rank_device, rank_gpus

GIB = 2**30
EIGHT = [80 * GIB] * 8


def test_one_gpu_per_rank_under_torchrun():
    for r in range(8):
        env = {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"}
        assert placement(env, EIGHT) == {"device_map": {"": f"cuda:{r}"}}
        assert rank_device(env, cuda_available=True) == f"cuda:{r}"
    # Two nodes: the local rank picks the GPU, not the global one.
    assert placement({"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}, EIGHT) == \
        {"device_map": {"": "cuda:1"}}


def test_a_large_model_spreads_over_its_ranks_share_only():
    env = {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "RANK": "1", "WORLD_SIZE": "4"}
    assert rank_gpus(env, 8) == [2, 3]
    assert placement(env, EIGHT, "auto") == {"device_map": "auto", "max_memory": {2: 80 * GIB, 3: 80 * GIB}}
    with pytest.raises(ValueError, match="8 ranks on a node with 4 GPUs"):
        rank_gpus({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "8"}, 4)


def test_without_a_launcher_or_without_cuda():
    assert placement({}, EIGHT) == {"device_map": {"": "cuda:0"}}
    assert placement({}, EIGHT, "auto") == {"device_map": "auto"}, "one process: the map as given"
    assert placement({"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}, []) == {}, "no CUDA: the CPU, every rank"
    assert placement({}, [], "cpu") == {"device_map": "cpu"}
    assert rank_device({"LOCAL_RANK": "3"}, cuda_available=False) == "cpu"
