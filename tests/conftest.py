"""Shared fixtures for the tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny tensor work on one thread: a second thread only adds synchronisation,
    and while the cores are busy with another job each parallel region (the per-channel
    convolution has many) can stall for milliseconds, making a 1 s test take 30."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
