"""One torch thread for the evaluate tests: on the shared 2-core machine, two OpenMP threads
that wait for each other's busy core make a forward pass up to 40x slower (measured: 1.76 s
against 0.04 s for MobileNetV3-Small at 640x480)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
