"""The C heap under CPU tensors: hand its free memory back to the system between passes and during backward.

glibc's malloc serves mid-sized blocks (most activations and per-layer gradients, a few MB each: its mmap threshold
rises to the largest block freed so far) from a heap whose free pages stay resident. A backward pass frees saved
activations and allocates gradients of other sizes as it goes, so the heap grows at its top while freed blocks in its
middle keep their pages: the process's peak memory passes the peak of its live tensors (GraSP's double backward on
GPT-2 small: 3.5x the parameters' bytes against 2.6x live, measured by ``benchmarks/criterion_cost.py``).
``malloc_trim`` returns those free pages (not only the top) to the system. Nothing here changes a value: the scores
do not depend on it, and on other C libraries (or for tensors off the CPU, whose allocators cache on purpose) it
does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# Autograd nodes run between two trims inside a backward pass. A trim walks the heap's free blocks and costs more the
# more of them there are; on GPT-2 small's double backward every 16th node kept the peak as low as trimming after
# every node did, for a fraction of the time, and sparser trims let it rise (a scratch sweep, no figure claimed; the
# benchmark's --no_heap_release measures what the trims save and cost).
TRIM_EVERY_NODES = 16


def release_free_memory() -> None:
    """Hand the C allocator's free heap memory back to the system (glibc's ``malloc_trim``; a no-op elsewhere).

    Criteria call this between passes, where a pass's memory is free; :func:`releasing_during_backward` calls it
    while a backward pass runs.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@contextmanager
def releasing_during_backward(*outputs: torch.Tensor, every: int = TRIM_EVERY_NODES) -> Iterator[None]:
    """Release the C heap's free memory every ``every`` autograd nodes while a backward pass from ``outputs`` runs.

    Hooks the nodes of the graph behind ``outputs`` (``grad_fn`` and everything it reaches) for the duration of the
    block and removes them after: the backward (``.backward()`` or ``torch.autograd.grad``) must run inside it. The
    gradients are unchanged (the hooks return nothing). A no-op where ``malloc_trim`` is unavailable or no output is
    a CPU tensor with a graph.

    Example:
        ```python
        >>> with releasing_during_backward(loss):
        ...     grads = torch.autograd.grad(loss, weights)
        ```
    """
    roots = [o.grad_fn for o in outputs if o.grad_fn is not None and o.device.type == "cpu"]
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every!r}")
    if not roots or _malloc_trim() is None:
        yield
        return
    ran = [0]

    def after_node(*_: Any) -> None:
        ran[0] += 1
        if ran[0] % every == 0:
            release_free_memory()

    handles, seen, pending = [], set(), list(roots)
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        handles.append(node.register_hook(after_node))
        pending.extend(child for child, _ in node.next_functions)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _malloc_trim():  # noqa: ANN202
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        try:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            libc = ctypes.CDLL(name) if name else None
            if libc is not None and hasattr(libc, "malloc_trim"):
                _MALLOC_TRIM = libc.malloc_trim
        except OSError:
            pass
    return _MALLOC_TRIM or None


_MALLOC_TRIM = None
