"""Test settings: everything offline and on the CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models on a small shared CPU: one intra-op thread per process avoids thrashing (subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def single_thread():  # noqa: ANN201
    """One intra-op thread: tiny models only lose time to thread contention on a small shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
