"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run torch on one thread: on shared CPUs one thread is several times faster than two under contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
