"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The suite's tensors are tiny: one intra-op thread is faster than two, and much faster on a
    busy machine (OpenMP threads waiting for a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
