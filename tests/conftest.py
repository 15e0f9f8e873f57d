"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny models are as fast on one, and far faster when the
    2 cores are shared with other jobs (more threads only contend)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
