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


# Files whose work runs in other processes (benchmark commands, the fused-pass probe, notebook kernels, the
# fault-injection plan, the IRP recipe's accelerate launches): started right after collection, so that it runs on the
# second core while the in-process tests (one thread) run on the first; their tests run last and only wait for what
# is, by then, mostly done. Each file still starts its own work when run alone.
EARLY_MODULES = (
    "test_benchmark_commands", "test_fused_pass_probe", "test_notebooks", "test_fault_injection", "test_irp_recipe",
)


def _early(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    return module is not None and module.__name__.rsplit(".", 1)[-1] in EARLY_MODULES and hasattr(module, "start_early")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    items[:] = [i for i in items if not _early(i)] + [i for i in items if _early(i)]


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    started = set()
    for item in session.items:
        if _early(item) and item.module not in started:
            started.add(item.module)
            item.module.start_early(session, session.config._tmp_path_factory)

