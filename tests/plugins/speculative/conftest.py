import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Vectorised statistical tests run on small tensors; on a shared CPU one thread is faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
