import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Small float64 ops with 2 OpenMP threads on a shared 2-core box can be ~100x slower; pin threads."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
