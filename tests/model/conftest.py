"""Model-test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Run model tests on one intra-op thread: the shapes are tiny, and on a shared 2-core machine two OpenMP
    threads spin-waiting on each other make each small op tens of times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
