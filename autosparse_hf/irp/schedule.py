"""IRP density schedules as exact kept-weight counts."""

from __future__ import annotations


def kept_counts(
    total: int, cycles: int, final_sparsity: float, schedule: str, densities: list[float] | None = None
) -> list[int]:
    """Weights kept after each cycle, ``[N, k_1, ..., k_E]``, with ``k_E = max(1, round((1 - final_sparsity) * N))``
    (a ticket keeps at least one weight).

    - ``equal_count``: every cycle removes the same number of the original weights, ``(N - k_E) / E`` (rounded so
      the cumulative count is exact): ``k_c = N - round(c * (N - k_E) / E)``, density ``1 - c (1 - d_E) / E``.
    - ``geometric``: every cycle keeps the same fraction of the survivors, ``k_c = round(N * d_E ** (c / E))``.
      (The reference code wrote the exponent as ``s ** 1/E``, which prunes 99.95% in the first cycle; this is the
      intended ``s ** (1 / E)``.)
    - ``custom``: ``k_c = round(N * densities[c - 1])`` (``cycles`` and ``final_sparsity`` must agree with the list).
    """
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    final = max(1, int(round((1.0 - final_sparsity) * total)))
    counts = [total]
    for c in range(1, cycles + 1):
        if schedule == "equal_count":
            counts.append(total - int(round(c * (total - final) / cycles)))
        elif schedule == "geometric":
            counts.append(int(round(total * (1.0 - final_sparsity) ** (c / cycles))))
        elif schedule == "custom":
            if not densities or len(densities) != cycles:
                raise ValueError(f"schedule 'custom' needs {cycles} densities, got {densities!r}")
            counts.append(int(round(total * densities[c - 1])))
        else:
            raise ValueError(f"unknown schedule {schedule!r}; choose equal_count, geometric or custom")
    counts[-1] = final
    for i in range(1, len(counts)):  # rounding must never make a later count larger, nor one below the final count
        counts[i] = min(max(counts[i], final), counts[i - 1])
    return counts
