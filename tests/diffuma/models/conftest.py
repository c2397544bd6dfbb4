import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Baseline-model tests run torch on one thread: these models are many small convolutions (in a
    loop, for the RNNs), and two intra-op threads on a busy 2-core machine spin against each other
    (measured up to 15x slower). The setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
