"""The per-tensor pruning schedule shared by the iterative criteria (SynFlow, Iter SNIP / FORCE, NTK-SAP)."""

from __future__ import annotations


def scheduled_count(numel: int, final: int, k: int, steps: int, available: int, schedule: str = "exp") -> int:
    """Weights a tensor of ``numel`` keeps after step ``k`` of ``steps`` towards its budget ``final`` (exactly
    ``final`` at the last step), never below ``final`` and never above the ``available`` (surviving or eligible)
    weights: ``numel * (final / numel) ^ (k / steps)`` for ``schedule="exp"``, ``numel - k * (numel - final) / steps``
    for ``"linear"`` (rounded)."""
    if k == steps or numel == 0:
        count = final
    elif schedule == "linear":
        count = round(numel - k * (numel - max(final, 0)) / steps)
    else:
        count = round(numel * (max(final, 0) / numel) ** (k / steps))
    return int(min(max(count, final), available))
