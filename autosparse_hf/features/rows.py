"""Feature rows of prunable tensors: the predictor's input, for score-dataset rows (training) and for a model being
pruned alike, computed tensor by tensor and, within a tensor, in row ranges so that memory stays bounded."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch

from .columns import FEATURE_COLUMNS, feature_columns, feature_names, needs_unit_columns
from .context import LayerContext
from .initial import InitialFeatures
from .statistics import LayerStatistics


class LayerFeatureColumns:
    """Per-tensor statistics of a feature set, and the feature rows ``[start, stop)`` computed from them.

    What :func:`layer_feature_matrix` returns for the whole tensor, available in row ranges, so that scoring never
    holds a whole ``(n, F)`` matrix (ResNet-18's largest tensor has 2.4M weights).

    Every column is an elementwise function of one weight's values and of per-tensor scalars or lookups, so rows
    computed in chunks are bit-identical to rows computed for the whole tensor at once.

    Args:
        w0: Initial weights of the tensor (any shape; flattened).
        g0: Initial gradients, same shape.
        layer: The tensor's layer context.
        feature_set: A key of ``FEATURE_SETS``.
        units: Per-weight ``unit_in``, ``unit_out`` and ``input_std`` (``InitialFeatures.unit_columns``), needed by
            the columns that declare ``needs_units``.
    """

    def __init__(
        self,
        w0: torch.Tensor,
        g0: torch.Tensor,
        layer: LayerContext,
        feature_set: str,
        units: Mapping[str, torch.Tensor] | None,
    ) -> None:
        self.names = feature_names(feature_set)
        # Resolved once: a column registered or replaced later does not change this tensor's rows.
        self.columns = {column.name: column for column in feature_columns(self.names)}
        self.w = w0.detach().reshape(-1).float().cpu()
        self.g = g0.detach().reshape(-1).float().cpu()
        self.n = self.w.numel()
        self.layer = layer
        self.units = units
        needing_units = sorted(name for name, column in self.columns.items() if column.needs_units)
        if needing_units and units is None:
            raise ValueError(f"feature {needing_units[0]!r} needs the unit columns (unit_in, unit_out, input_std)")
        # Only the statistics the selected columns declare.
        wanted = [s for column in self.columns.values() for s in column.statistics]
        self.statistics = LayerStatistics(self.w, self.g, layer, units, wanted)

    def chunks(self, chunk_size: int) -> Iterator[torch.Tensor]:
        """All rows, in consecutive ``(chunk_size, F)`` matrices, bit-identical to :func:`layer_feature_matrix`."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        for start in range(0, self.n, chunk_size):
            yield self.rows(start, min(start + chunk_size, self.n))

    def constant_values(self) -> dict[str, float]:
        """The feature columns that hold one value for the whole tensor (layer context), as float32 values.

        In column registration order (the order the folded predictor sums them in), exactly as written into rows.
        """
        return {
            name: self.columns[name].constant_value(self.layer)
            for name in FEATURE_COLUMNS
            if name in self.columns and self.columns[name].is_constant
        }

    def rows(
        self, start: int, stop: int, out: torch.Tensor | None = None, names: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Feature rows ``[start, stop)`` as a ``(stop - start, F)`` float32 matrix.

        Args:
            start: First row (weight position in the flattened tensor).
            stop: One past the last row.
            out: A float32 buffer of at least ``stop - start`` rows and ``F`` columns to write into (its first
                ``F`` columns; further columns are left as they are), so a caller can reuse one buffer.
            names: Only these feature columns, in this order (default: the whole feature set).
        """
        names = self.names if names is None else tuple(names)
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise ValueError(f"features {unknown} are not in this feature set {self.names}")
        if out is None:
            matrix = torch.empty(stop - start, len(names), dtype=torch.float32)
        else:
            if out.dtype != torch.float32 or out.shape[0] < stop - start or out.shape[1] < len(names):
                raise ValueError(
                    f"out must be float32 with >= {stop - start} rows and >= {len(names)} columns, "
                    f"got {out.dtype} {tuple(out.shape)}"
                )
            matrix = out[: stop - start, : len(names)]
        # Each column is written straight into the preallocated matrix: peak memory stays near the matrix itself.
        for j, name in enumerate(names):
            self.columns[name].compute(self.statistics, start, stop, matrix[:, j])
        return matrix


def layer_feature_matrix(
    w0: torch.Tensor,
    g0: torch.Tensor,
    layer: LayerContext,
    feature_set: str = "default",
    units: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Feature vectors ``(n, F)`` of the ``n`` weights of one tensor.

    Args:
        w0: Initial weights of the tensor (any shape; flattened).
        g0: Initial gradients, same shape.
        layer: The tensor's layer context.
        feature_set: A key of ``FEATURE_SETS``.
        units: Per-weight ``unit_in``, ``unit_out`` and ``input_std`` (``InitialFeatures.unit_columns``), needed by
            the unit features.
    """
    columns = LayerFeatureColumns(w0, g0, layer, feature_set, units)
    return columns.rows(0, columns.n)


def iter_feature_columns(
    features: InitialFeatures, feature_set: str = "default", prefetch: bool = False
) -> Iterator[tuple[LayerContext, LayerFeatureColumns]]:
    """Yield ``(layer, columns)`` for every prunable tensor; ``columns.rows(start, stop)`` builds feature rows.

    With ``prefetch``, one background thread computes the next tensor's statistics (its within-tensor sorts cost the
    most and run on one core) while the caller scores the current tensor, so scoring keeps two cores busy; at most
    two tensors' statistics are alive at once. Without it, memory stays lower (one tensor's statistics, and no second
    allocator arena).
    """
    needs_units = needs_unit_columns(feature_set)
    layers = list(features.layers)

    def columns(layer: LayerContext) -> LayerFeatureColumns:
        units = features.unit_columns(layer.name) if needs_units else None
        return LayerFeatureColumns(features.weights[layer.name], features.gradients[layer.name], layer, feature_set, units)

    if not prefetch or len(layers) < 2:
        for layer in layers:
            yield layer, columns(layer)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="autosparse-features") as pool:
        pending = pool.submit(columns, layers[0])
        for i, layer in enumerate(layers):
            current = pending.result()
            if i + 1 < len(layers):
                pending = pool.submit(columns, layers[i + 1])
            yield layer, current
            del current


def iter_feature_matrices(
    features: InitialFeatures, feature_set: str = "default"
) -> Iterator[tuple[LayerContext, torch.Tensor]]:
    """Yield ``(layer, matrix)`` for every prunable tensor of ``features``, one tensor at a time (bounded memory)."""
    for layer, columns in iter_feature_columns(features, feature_set):
        yield layer, columns.rows(0, columns.n)


def with_density(features: torch.Tensor, density: float) -> torch.Tensor:
    """Append the input of the density-conditioned (membership) target: ``log(density)`` for every row."""
    column = torch.full((features.shape[0], 1), float(math.log(density)), dtype=features.dtype)
    return torch.cat([features, column], dim=1)
