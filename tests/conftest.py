import os

# Nothing in the test suite may wait on an unreachable host (set before anything imports huggingface_hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def single_torch_thread():
    """For modules of many tiny models: they run fastest on one thread; on a busy shared machine two are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
