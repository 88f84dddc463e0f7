import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test: the experiments' runs are small, and on a shared machine
    more threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
