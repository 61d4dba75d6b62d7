import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # var_helpers


@pytest.fixture(autouse=True, scope="module")  # before the module-scoped model fixtures
def _one_thread():
    # these models are tiny: a second thread only adds contention on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
