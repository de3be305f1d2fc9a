import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # tiny matmuls gain nothing from a second thread, and on a busy machine waiting threads make them 100x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
