"""The per-tensor pruning schedule shared by the iterative criteria (SynFlow, Iter SNIP / FORCE, NTK-SAP)."""

from __future__ import annotations


def scheduled_count(numel: int, final: int, k: int, steps: int, available: int) -> int:
    """Weights a tensor of ``numel`` keeps after step ``k`` of ``steps``: the exponential schedule
    ``numel * (final / numel) ^ (k / steps)`` towards its budget ``final`` (exactly ``final`` at the last step), never
    below ``final`` and never above the ``available`` (surviving or eligible) weights."""
    count = final if k == steps or numel == 0 else round(numel * (max(final, 0) / numel) ** (k / steps))
    return int(min(max(count, final), available))
