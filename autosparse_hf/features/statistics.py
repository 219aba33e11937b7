"""Per-tensor statistics that feature columns are computed from (scales, within-tensor ranks, per-unit norms).

A feature column is an elementwise function of one weight's values and of per-tensor statistics; the statistics are
what needs the whole tensor at once. Each one is registered here by name with what it requires, so that a tensor
computes only the statistics its selected columns declare, in registration order, and drops an intermediate (such
as ``|w0 g0|``) as soon as nothing left needs it: the statistics of the largest tensors dominate scoring memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .context import LayerContext

# Added to every scale a column divides by, so that an all-zero tensor gives zeros rather than NaNs.
TINY = 1e-12


@dataclass(frozen=True)
class TensorStatistic:
    """One per-tensor statistic.

    Attributes:
        name: Key under which columns read it (``statistics[name]``).
        compute: ``compute(statistics) -> value`` from the tensor's :class:`LayerStatistics` (its ``w``, ``g``,
            ``layer``, ``units`` and the statistics named in ``requires``).
        requires: Statistics that must be computed first; each must already be registered.
        needs_units: Reads ``statistics.units`` (per-weight ``unit_in``, ``unit_out``, ``input_std``).
    """

    name: str
    compute: Callable[[LayerStatistics], Any]
    requires: tuple[str, ...] = ()
    needs_units: bool = False


# Registration order is computation order; a statistic's requirements are registered before it.
TENSOR_STATISTICS: dict[str, TensorStatistic] = {}


def register_tensor_statistic(
    name: str,
    compute: Callable[[LayerStatistics], Any],
    *,
    requires: Iterable[str] = (),
    needs_units: bool = False,
) -> TensorStatistic:
    """Register a per-tensor statistic that feature columns can declare (see ``register_feature_column``).

    Args:
        name: A new statistic name.
        compute: ``compute(statistics) -> value``; a value that depends on row order (a rank, a per-weight lookup)
            must be a full per-weight tensor so that columns can slice it.
        requires: Already registered statistics it reads.
        needs_units: It reads the unit columns (``statistics.units``).

    Returns:
        The registered :class:`TensorStatistic`.
    """
    if name in TENSOR_STATISTICS:
        raise ValueError(f"tensor statistic {name!r} is already registered")
    requires = tuple(requires)
    unknown = [r for r in requires if r not in TENSOR_STATISTICS]
    if unknown:
        raise ValueError(f"statistic {name!r} requires unregistered statistics {unknown}")
    statistic = TensorStatistic(name, compute, requires, needs_units)
    TENSOR_STATISTICS[name] = statistic
    return statistic


def statistics_closure(names: Iterable[str]) -> list[str]:
    """``names`` and everything they require, in computation (registration) order."""
    needed: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        if name not in TENSOR_STATISTICS:
            raise ValueError(f"unknown tensor statistic {name!r}; registered: {sorted(TENSOR_STATISTICS)}")
        needed.add(name)
        pending.extend(TENSOR_STATISTICS[name].requires)
    return [name for name in TENSOR_STATISTICS if name in needed]


class LayerStatistics:
    """One tensor's flattened ``w0`` and ``g0`` (float32, CPU), its context and unit columns, and the requested
    per-tensor statistics (``statistics[name]``).

    Args:
        w: Flattened float32 CPU initial weights.
        g: Flattened float32 CPU initial gradients.
        layer: The tensor's layer context.
        units: Per-weight ``unit_in``, ``unit_out`` and ``input_std`` (``InitialFeatures.unit_columns``), or
            ``None`` when no requested statistic needs them.
        names: Statistics to compute.
    """

    def __init__(
        self,
        w: torch.Tensor,
        g: torch.Tensor,
        layer: LayerContext,
        units: Mapping[str, torch.Tensor] | None,
        names: Iterable[str],
    ) -> None:
        self.w = w
        self.g = g
        self.n = w.numel()
        self.layer = layer
        self.units = units
        requested = set(names)
        order = statistics_closure(requested)
        self._values: dict[str, Any] = {}
        for i, name in enumerate(order):
            self._values[name] = TENSOR_STATISTICS[name].compute(self)
            # Intermediates nobody asked for are dropped once no later statistic requires them.
            later = {r for other in order[i + 1 :] for r in TENSOR_STATISTICS[other].requires}
            for done in order[: i + 1]:
                if done not in requested and done not in later:
                    self._values.pop(done, None)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values


def _rank01(values: torch.Tensor) -> torch.Tensor:
    """Rank of each value within the tensor, scaled to [0, 1] (0 = smallest); ties by position."""
    n = values.numel()
    keys = values.reshape(-1)
    if keys.dtype == torch.float32 and not bool((keys < 0).any()):
        # Non-negative float32 values order exactly as their bit patterns read as int32, and torch sorts integers
        # with a radix sort, much faster on CPU than a stable float sort (same order, ties by position).
        keys = keys.contiguous().view(torch.int32)
    order = torch.sort(keys, stable=True).indices
    rank = torch.empty(n, dtype=torch.float32)
    rank[order] = torch.arange(n, dtype=torch.float32) / max(n - 1, 1)
    return rank


def _unit_norms(statistics: LayerStatistics, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(index, norms, scale)``: each weight's unit index (``key`` of the unit columns), the ``g0`` norm of every
    unit, and the mean unit norm."""
    index = statistics.units[key]
    # int32 indices are accepted as they are: no n x 8-byte copy of the index for the largest tensor.
    index = index if index.dtype in (torch.int32, torch.int64) else index.long()
    norms = torch.zeros(int(index.max()) + 1).index_add_(0, index, statistics.g * statistics.g).sqrt_()
    # Every unit has the same number of weights, so the mean over weights is the mean over units.
    return index, norms, norms.mean() + TINY


# Built-in statistics. The expressions are the ones the predictors were trained with: changing an operation or its
# order changes float32 rounding and therefore predictions.
register_tensor_statistic("w_scale", lambda s: s.w.std(unbiased=False) + TINY)
register_tensor_statistic("g_scale", lambda s: s.g.abs().mean() + TINY)
register_tensor_statistic("abs_w0g0", lambda s: (s.w * s.g).abs_())
register_tensor_statistic("wg_scale", lambda s: s["abs_w0g0"].mean() + TINY, requires=("abs_w0g0",))
register_tensor_statistic("rank_wg", lambda s: _rank01(s["abs_w0g0"]), requires=("abs_w0g0",))
register_tensor_statistic("rank_w", lambda s: _rank01(s.w.abs()))
register_tensor_statistic("input_std", lambda s: s.units["input_std"].float(), needs_units=True)
register_tensor_statistic("input_std_scale", lambda s: s["input_std"].mean() + TINY, requires=("input_std",))
register_tensor_statistic("unit_norms_in", lambda s: _unit_norms(s, "unit_in"), needs_units=True)
register_tensor_statistic("unit_norms_out", lambda s: _unit_norms(s, "unit_out"), needs_units=True)
