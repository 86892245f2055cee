"""Train tests use one torch thread: their tensors are tiny, and on a busy 2-core machine extra
intra-op threads only wait on each other (an update of a width-16 net went from 4 ms to 500 ms)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
