import pytest
import torch


@pytest.fixture(autouse=True)
def _keep_subnormals():
    """The experiments' runner flushes subnormal floats in its process (a process-wide CPU
    mode); every test starts and ends with the default, keeping them."""
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)
