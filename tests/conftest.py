"""Fixtures shared across the test folders."""

import pytest


@pytest.fixture
def one_torch_thread():
    """Tiny networks use one torch thread: on a busy 2-core machine extra intra-op threads only wait
    on each other (an update of a width-16 net went from 4 ms to 500 ms)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
