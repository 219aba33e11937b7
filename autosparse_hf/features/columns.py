"""The registry of per-weight feature columns and the named feature sets built from it.

Raw ``w0`` and ``g0`` depend on the layer's initialization scale and on the dataset, so the default set normalizes
within each layer and adds layer context: that is what lets a predictor trained on one network score another. Each
column is one :class:`FeatureColumn` entry: the per-tensor statistics it reads (:mod:`.statistics`), whether it
needs the unit columns, whether it is constant within a tensor, and how it writes rows ``[start, stop)``. Adding a
feature is one :func:`register_feature_column` call; a feature set is a tuple of column names in ``FEATURE_SETS``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .context import LayerContext
from .statistics import TENSOR_STATISTICS, LayerStatistics, statistics_closure

ColumnCompute = Callable[[LayerStatistics, int, int, torch.Tensor], object]
"""``compute(statistics, start, stop, out)`` writes the column's values of rows ``[start, stop)`` into ``out``."""


def _fill_constant(
    constant: Callable[[LayerContext], float], statistics: LayerStatistics, start: int, stop: int, out: torch.Tensor
) -> None:
    out.fill_(constant(statistics.layer))


@dataclass(frozen=True)
class FeatureColumn:
    """One per-weight feature column.

    Attributes:
        name: Column name, as feature sets list it.
        compute: ``compute(statistics, start, stop, out)`` writes rows ``[start, stop)`` into the float32 vector
            ``out`` (a column of the feature matrix, so possibly strided); it reads ``statistics.w``,
            ``statistics.g``, ``statistics.layer``, ``statistics.units`` and ``statistics[name]`` for the declared
            ``statistics``. Every value must depend only on the row's own weight and on per-tensor statistics, so
            that rows computed in chunks equal rows computed for the whole tensor. Optional for constant columns
            (default: fill ``out`` with the constant).
        statistics: Per-tensor statistics it reads (names registered in ``TENSOR_STATISTICS``).
        needs_units: Reads the unit columns; also true when any of its statistics does.
        constant: For a column that holds one value for the whole tensor, that value from the layer context. A
            constant column can be folded into the predictor's first layer instead of computed per row; a
            ``compute`` given as well must write exactly this value.
    """

    name: str
    compute: ColumnCompute | None = None
    statistics: tuple[str, ...] = ()
    needs_units: bool = False
    constant: Callable[[LayerContext], float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "statistics", tuple(self.statistics))
        closure = statistics_closure(self.statistics)  # raises on an unknown statistic
        if any(TENSOR_STATISTICS[s].needs_units for s in closure):
            object.__setattr__(self, "needs_units", True)
        if self.compute is None:
            if self.constant is None:
                raise ValueError(f"feature column {self.name!r} needs a compute function or a constant")
            object.__setattr__(self, "compute", functools.partial(_fill_constant, self.constant))

    @property
    def is_constant(self) -> bool:
        return self.constant is not None

    def constant_value(self, layer: LayerContext) -> float:
        """The constant as float32 stores it (exactly what ``fill_`` writes into a row)."""
        if self.constant is None:
            raise ValueError(f"feature column {self.name!r} is not constant within a tensor")
        return float(torch.tensor(self.constant(layer), dtype=torch.float32))


# Registration order is the order of LayerFeatureColumns.constant_values(), which the folded predictor sums in.
FEATURE_COLUMNS: dict[str, FeatureColumn] = {}


def register_feature_column(
    name: str,
    compute: ColumnCompute | None = None,
    *,
    statistics: Iterable[str] = (),
    needs_units: bool = False,
    constant: Callable[[LayerContext], float] | None = None,
    overwrite: bool = False,
) -> FeatureColumn:
    """Register a feature column, so that feature sets (``FEATURE_SETS``) can list it by name.

    Args:
        name: Column name.
        compute: ``compute(statistics, start, stop, out)``, see :class:`FeatureColumn`.
        statistics: Per-tensor statistics ``compute`` reads (see ``register_tensor_statistic`` for new ones).
        needs_units: ``compute`` reads the unit columns.
        constant: ``constant(layer) -> float`` for a column constant within a tensor.
        overwrite: Replace a registered column of the same name (a predictor trained with the old definition then
            receives different inputs).

    Returns:
        The registered :class:`FeatureColumn`.

    Example:

    ```python
    >>> import torch
    >>> from autosparse_hf.features import FEATURE_SETS, register_feature_column
    >>> def abs_w0_squared(statistics, start, stop, out):
    ...     torch.square(statistics.w[start:stop], out=out)
    >>> column = register_feature_column("abs_w0_squared", abs_w0_squared)
    >>> FEATURE_SETS["squared"] = FEATURE_SETS["default"] + ("abs_w0_squared",)
    ```
    """
    if name in FEATURE_COLUMNS and not overwrite:
        raise ValueError(f"feature column {name!r} is already registered (pass overwrite=True to replace it)")
    column = FeatureColumn(name, compute, tuple(statistics), needs_units, constant)
    FEATURE_COLUMNS[name] = column
    return column


def _unit_norm_rel(unit_norms: tuple[torch.Tensor, torch.Tensor, torch.Tensor], start: int, stop: int,
                   out: torch.Tensor) -> None:
    index, norms, scale = unit_norms
    torch.div(norms[index[start:stop]], scale, out=out)


# Built-in columns. The operations are the ones the predictors were trained with: changing one, or its order, changes
# float32 rounding and therefore predictions (and needs a FEATURE_SCHEMA_VERSION bump if it changes the meaning).
# fmt: off
register_feature_column("w0", lambda s, a, b, out: out.copy_(s.w[a:b]))
register_feature_column("g0", lambda s, a, b, out: out.copy_(s.g[a:b]))
register_feature_column("w0_over_std", lambda s, a, b, out: torch.div(s.w[a:b], s["w_scale"], out=out),
                        statistics=("w_scale",))
register_feature_column("abs_w0_over_std", lambda s, a, b, out: torch.div(s.w[a:b].abs(), s["w_scale"], out=out),
                        statistics=("w_scale",))
register_feature_column("g0_over_mean_abs", lambda s, a, b, out: torch.div(s.g[a:b], s["g_scale"], out=out),
                        statistics=("g_scale",))
register_feature_column("abs_g0_over_mean_abs",
                        lambda s, a, b, out: torch.div(s.g[a:b].abs(), s["g_scale"], out=out), statistics=("g_scale",))
register_feature_column("abs_w0g0_over_mean",
                        lambda s, a, b, out: torch.div((s.w[a:b] * s.g[a:b]).abs_(), s["wg_scale"], out=out),
                        statistics=("wg_scale",))
register_feature_column("rank_abs_w0", lambda s, a, b, out: out.copy_(s["rank_w"][a:b]), statistics=("rank_w",))
register_feature_column("rank_abs_w0g0", lambda s, a, b, out: out.copy_(s["rank_wg"][a:b]), statistics=("rank_wg",))
register_feature_column("log_fan_in", constant=lambda layer: math.log(layer.fan_in))
register_feature_column("log_fan_out", constant=lambda layer: math.log(layer.fan_out))
register_feature_column("relative_depth", constant=lambda layer: float(layer.relative_depth))
register_feature_column("is_conv", constant=lambda layer: 1.0 if layer.kind == "conv" else 0.0)
register_feature_column("log_numel", constant=lambda layer: math.log(layer.numel))
register_feature_column("input_std_rel",
                        lambda s, a, b, out: torch.div(s["input_std"][a:b], s["input_std_scale"], out=out),
                        statistics=("input_std", "input_std_scale"))
register_feature_column("in_grad_norm_rel", lambda s, a, b, out: _unit_norm_rel(s["unit_norms_in"], a, b, out),
                        statistics=("unit_norms_in",))
register_feature_column("out_grad_norm_rel", lambda s, a, b, out: _unit_norm_rel(s["unit_norms_out"], a, b, out),
                        statistics=("unit_norms_out",))
# fmt: on

_NORMALIZED = (
    "w0_over_std",
    "abs_w0_over_std",
    "g0_over_mean_abs",
    "abs_g0_over_mean_abs",
    "abs_w0g0_over_mean",
    "rank_abs_w0",
    "rank_abs_w0g0",
    "log_fan_in",
    "log_fan_out",
    "relative_depth",
    "is_conv",
    "log_numel",
)
# Unit-level features: the spread of a weight's input unit's activation and the g0 norms of its input and output
# units, the cheapest init-time signals of which structure (input units, layers) keeps its weights.
UNIT_FEATURES = ("input_std_rel", "in_grad_norm_rel", "out_grad_norm_rel")

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "paper": ("w0", "g0"),
    "weight": ("w0",),
    "gradient": ("g0",),
    "normalized": _NORMALIZED,
    "default": _NORMALIZED + UNIT_FEATURES,
}


def feature_names(feature_set: str) -> tuple[str, ...]:
    """Column names of a feature set; unknown sets raise ``ValueError`` listing the known ones."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; known: {sorted(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set]


def feature_columns(names: Sequence[str]) -> tuple[FeatureColumn, ...]:
    """The registered columns of ``names``, in that order; an unregistered name raises ``ValueError``."""
    unknown = [name for name in names if name not in FEATURE_COLUMNS]
    if unknown:
        raise ValueError(f"unregistered feature columns {unknown}; registered: {sorted(FEATURE_COLUMNS)}")
    return tuple(FEATURE_COLUMNS[name] for name in names)


def needs_unit_columns(feature_set: str) -> bool:
    """Whether any column of ``feature_set`` reads the unit columns (``InitialFeatures.unit_columns``)."""
    return any(column.needs_units for column in feature_columns(feature_names(feature_set)))
