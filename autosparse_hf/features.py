"""Per-weight features at initialization, one implementation for score datasets and for pruning.

AutoSparse (arXiv 2408.14757) predicts how long a weight survives iterative rewind pruning from what is known at
initialization: the initial weight ``w0`` and the initial gradient ``g0``. Here ``g0`` is averaged over a fixed
number of batches (not summed over the training set as in the reference code), in eval mode. Layer context
(kind, fan-in, fan-out, relative depth, size) describes where the weight sits, which is what lets a predictor move
between architectures. The IRP callback records these when it starts and AutoS computes them, with this same code,
for the model it prunes.

Unit-level features describe the two units a weight connects: the spread of its input unit's activation over the
feature batches (for the first layer: how informative the pixel is), and the gradient norms of its input unit's
column and output unit's row. What transfers between initializations is structure (which input units and layers
keep weights), and these are its cheapest init-time signals.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .families import PrunableParameter, get_family, get_prunable_parameters
from .gradients import average_gradients, take_batches
from .state import preserved_model_state

FEATURE_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class LayerContext:
    """Where a prunable tensor sits in the network."""

    name: str
    kind: str
    fan_in: int
    fan_out: int
    depth: int
    relative_depth: float
    numel: int
    shape: tuple[int, ...]
    transposed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InitialFeatures:
    """Raw per-weight features of a model at initialization, keyed by parameter name.

    Attributes:
        weights: ``w0`` per prunable tensor.
        gradients: ``g0`` per prunable tensor, averaged over ``num_batches`` batches.
        layers: Layer context per prunable tensor, in parameter order.
        num_batches: Batches averaged for ``g0``.
        input_std: Per tensor, the standard deviation of each input unit's activation (per input feature of a
            linear layer, per input channel of a convolution) over the same batches; ``None`` where unknown (then
            the unit features treat every unit alike).
    """

    weights: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    layers: list[LayerContext]
    num_batches: int
    input_std: dict[str, torch.Tensor] | None = None
    schema_version: int = FEATURE_SCHEMA_VERSION

    def unit_columns(self, name: str) -> dict[str, torch.Tensor]:
        """Per-weight ``unit_in``, ``unit_out`` and ``input_std`` of one tensor (flattened, position order)."""
        layer = next(layer for layer in self.layers if layer.name == name)
        unit_in, unit_out = unit_indices(layer)
        stds = self.input_std.get(name) if self.input_std is not None else None
        per_weight = stds.float().cpu()[unit_in] if stds is not None and stds.numel() > 0 else torch.ones(layer.numel)
        return {"unit_in": unit_in, "unit_out": unit_out, "input_std": per_weight}

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers)


def feature_tensors(features: InitialFeatures) -> dict[str, torch.Tensor]:
    """The tensors of ``features`` under flat keys (``w0/<name>``, ``g0/<name>``, ``input_std/<name>``) for
    safetensors; :func:`features_from_tensors` reads them back."""
    tensors = {}
    for layer in features.layers:
        tensors[f"w0/{layer.name}"] = features.weights[layer.name].contiguous().cpu()
        tensors[f"g0/{layer.name}"] = features.gradients[layer.name].contiguous().cpu()
        if features.input_std is not None and layer.name in features.input_std:
            tensors[f"input_std/{layer.name}"] = features.input_std[layer.name].contiguous().cpu()
    return tensors


def features_from_tensors(
    tensors: Mapping[str, torch.Tensor], layers: list[dict[str, Any]], num_batches: int
) -> InitialFeatures:
    """Inverse of :func:`feature_tensors`; ``layers`` are ``LayerContext.to_dict()`` entries."""
    contexts = [LayerContext(**{**d, "shape": tuple(d["shape"])}) for d in layers]
    names = [layer.name for layer in contexts]
    return InitialFeatures(
        weights={n: tensors[f"w0/{n}"] for n in names},
        gradients={n: tensors[f"g0/{n}"] for n in names},
        layers=contexts,
        num_batches=num_batches,
        input_std={n: tensors[f"input_std/{n}"] for n in names if f"input_std/{n}" in tensors},
    )


def layer_contexts(params: Mapping[str, PrunableParameter]) -> list[LayerContext]:
    """Layer context of each prunable tensor; relative depth is 0 for the first and 1 for the last."""
    last = max(len(params) - 1, 1)
    return [
        LayerContext(
            name=p.name,
            kind=p.kind,
            fan_in=p.fan_in,
            fan_out=p.fan_out,
            depth=p.depth,
            relative_depth=p.depth / last,
            numel=p.param.numel(),
            shape=tuple(p.param.shape),
            transposed=p.transposed,
        )
        for p in params.values()
    ]


def unit_indices(layer: LayerContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the input unit and of the output unit of every weight of a tensor (flattened, position order).

    Weights are stored (out, in, *kernel) by linear and convolution layers and (in, out) by GPT-2's ``Conv1D``;
    input units are input features (linear) or input channels (convolution).
    """
    shape = layer.shape
    idx = torch.arange(layer.numel, dtype=torch.int32 if layer.numel < 2**31 else torch.int64)
    if len(shape) < 2:
        return torch.zeros_like(idx), idx
    if layer.transposed:
        return idx // shape[1], idx % shape[1]
    per_out = layer.numel // shape[0]
    kernel = per_out // shape[1]
    return (idx % per_out) // kernel, idx // per_out


class _InputStatistics:
    """Forward pre-hooks that accumulate per-unit first and second moments of each prunable module's input."""

    def __init__(self, model: nn.Module, params: Mapping[str, PrunableParameter]) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.squares: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.handles = []
        for name, p in params.items():
            if p.kind not in ("linear", "conv"):
                continue  # embeddings and pattern-included tensors take ids or nothing per unit
            module = model.get_submodule(p.module_name) if p.module_name else model
            self.handles.append(module.register_forward_pre_hook(self._hook(name, p.kind)))

    def _hook(self, name: str, kind: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple) -> None:  # noqa: ARG001
            if not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0].detach().float()
            x = x.movedim(1, -1) if kind == "conv" else x  # units last
            x = x.reshape(-1, x.shape[-1])
            self.sums[name] = self.sums.get(name, 0) + x.sum(0)
            self.squares[name] = self.squares.get(name, 0) + (x * x).sum(0)
            self.counts[name] = self.counts.get(name, 0) + x.shape[0]

        return hook

    def stds(self) -> dict[str, torch.Tensor]:
        result = {}
        for name, total in self.sums.items():
            mean = total / self.counts[name]
            var = (self.squares[name] / self.counts[name] - mean * mean).clamp_min(0.0)
            result[name] = var.sqrt().cpu()
        return result

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _broadcast(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's values on every rank (ranks see different data shards; features must agree)."""
    if _world_size() == 1:
        return tensors
    for tensor in tensors.values():
        dist.broadcast(tensor, src=0)
    return tensors


def compute_initial_features(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]] | None,
    num_batches: int = 1,
    *,
    params: Mapping[str, PrunableParameter] | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    copy_weights: bool = True,
    preserve_state: bool = True,
) -> InitialFeatures:
    """``w0``, ``g0`` and layer context of every prunable weight; the model is left exactly as found.

    Args:
        model: The model at initialization.
        dataloader: Batches (dicts) for ``g0``.
        num_batches: How many batches ``g0`` averages over.
        params: Prunable parameters (default: ``get_prunable_parameters(model, include, exclude)``).
        copy_weights: Store copies of the weights as ``w0`` (keep it for anything that outlives a change of the
            weights, such as an IRP record); ``False`` stores views of the parameters, for a caller that uses the
            features while the weights stay as they are (a criterion scoring a model), one model's size less.
        preserve_state: Snapshot and restore the model (weights, buffers, gradients, modes, RNG) around the
            gradient computation. ``False`` only inside a caller that already does so (criteria run inside
            ``compute_scores``' ``preserved_model_state``), one model's size less.
    """
    params = params if params is not None else get_prunable_parameters(model, include, exclude)
    with preserved_model_state(model) if preserve_state else contextlib.nullcontext():
        # Drawing batches inside: a shuffling DataLoader consumes the global RNG, which must be left as found.
        batches = take_batches(dataloader, num_batches, "the initial-gradient feature")
        statistics = _InputStatistics(model, params)
        try:
            grads = average_gradients(model, params, batches, get_family(model))
        finally:
            statistics.remove()
    # Under several processes rank 0's weights are broadcast into w0, which must then not be the parameters.
    copy = copy_weights or _world_size() > 1
    weights = {name: p.param.detach().clone() if copy else p.param.detach() for name, p in params.items()}
    grads = _broadcast({name: g.contiguous() for name, g in grads.items()})
    weights = _broadcast({name: w.contiguous() for name, w in weights.items()})
    input_std = _broadcast({name: s.contiguous() for name, s in statistics.stds().items()})
    return InitialFeatures(
        weights=weights,
        gradients=grads,
        layers=layer_contexts(params),
        num_batches=len(batches),
        input_std=input_std,
    )


# ----------------------------------------------------------------------------------------------------------------
# Feature sets: per-weight feature vectors for the AutoS predictor.
#
# Raw w0 and g0 depend on the layer's initialization scale and on the dataset, so the default set normalizes within
# each layer and adds layer context: that is what lets a predictor trained on one network score another. The same
# function computes the vectors for score-dataset rows (training) and for a model being pruned.

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


class LayerFeatureColumns:
    """Per-tensor statistics of a feature set, and the feature rows ``[start, stop)`` computed from them.

    What :func:`layer_feature_matrix` returns for the whole tensor, available in row ranges, so that scoring never
    holds a whole ``(n, F)`` matrix (ResNet-18's largest tensor has 2.4M weights).

    Every column is an elementwise function of one weight's values and of per-tensor scalars or lookups, so rows
    computed in chunks are bit-identical to rows computed for the whole tensor at once.
    """

    _TINY = 1e-12

    def __init__(
        self,
        w0: torch.Tensor,
        g0: torch.Tensor,
        layer: LayerContext,
        feature_set: str,
        units: Mapping[str, torch.Tensor] | None,
    ) -> None:
        self.names = feature_names(feature_set)
        self.w = w0.detach().reshape(-1).float().cpu()
        self.g = g0.detach().reshape(-1).float().cpu()
        self.n = self.w.numel()
        self.layer = layer
        self.units = units
        needs = set(self.names)
        if needs & set(UNIT_FEATURES) and units is None:
            missing = sorted(needs & set(UNIT_FEATURES))[0]
            raise ValueError(f"feature {missing!r} needs the unit columns (unit_in, unit_out, input_std)")
        tiny = self._TINY
        # Per-tensor scalars and whole-tensor columns, only those the feature set uses.
        if needs & {"w0_over_std", "abs_w0_over_std"}:
            self.w_scale = self.w.std(unbiased=False) + tiny
        if needs & {"g0_over_mean_abs", "abs_g0_over_mean_abs"}:
            self.g_scale = self.g.abs().mean() + tiny
        if "abs_w0g0_over_mean" in needs or "rank_abs_w0g0" in needs:
            product = (self.w * self.g).abs_()
            self.wg_scale = product.mean() + tiny
            self.rank_wg = _rank01(product) if "rank_abs_w0g0" in needs else None
            del product
        if "rank_abs_w0" in needs:
            self.rank_w = _rank01(self.w.abs())
        if "input_std_rel" in needs:
            stds = units["input_std"].float()
            self.input_std = stds
            self.input_std_scale = stds.mean() + tiny
        self.unit_norms: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for name, key in (("in_grad_norm_rel", "unit_in"), ("out_grad_norm_rel", "unit_out")):
            if name in needs:
                index = units[key]
                index = index if index.dtype in (torch.int32, torch.int64) else index.long()
                # int32 indices are accepted as they are: no n x 8-byte copy of the index for the largest tensor.
                norms = torch.zeros(int(index.max()) + 1).index_add_(0, index, self.g * self.g).sqrt_()
                # Every unit has the same number of weights, so the mean over weights is the mean over units.
                self.unit_norms[name] = (index, norms, norms.mean() + tiny)

    def chunks(self, chunk_size: int) -> Iterator[torch.Tensor]:
        """All rows, in consecutive ``(chunk_size, F)`` matrices, bit-identical to :func:`layer_feature_matrix`."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        for start in range(0, self.n, chunk_size):
            yield self.rows(start, min(start + chunk_size, self.n))

    def constant_values(self) -> dict[str, float]:
        """The feature columns that hold one value for the whole tensor (layer context), as float32 values."""
        values = {
            "log_fan_in": math.log(self.layer.fan_in),
            "log_fan_out": math.log(self.layer.fan_out),
            "relative_depth": float(self.layer.relative_depth),
            "is_conv": 1.0 if self.layer.kind == "conv" else 0.0,
            "log_numel": math.log(self.layer.numel),
        }
        # Rounded to float32 exactly as fill_ writes them into a row.
        return {n: float(torch.tensor(v, dtype=torch.float32)) for n, v in values.items() if n in self.names}

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
        w, g = self.w[start:stop], self.g[start:stop]
        if out is None:
            matrix = torch.empty(stop - start, len(names), dtype=torch.float32)
        else:
            if out.dtype != torch.float32 or out.shape[0] < stop - start or out.shape[1] < len(names):
                raise ValueError(
                    f"out must be float32 with >= {stop - start} rows and >= {len(names)} columns, "
                    f"got {out.dtype} {tuple(out.shape)}"
                )
            matrix = out[: stop - start, : len(names)]
        # Each column is written straight into the preallocated matrix and dropped: peak memory stays near the
        # matrix itself.
        for j, name in enumerate(names):
            column = matrix[:, j]
            if name == "w0":
                column.copy_(w)
            elif name == "g0":
                column.copy_(g)
            elif name == "w0_over_std":
                torch.div(w, self.w_scale, out=column)
            elif name == "abs_w0_over_std":
                torch.div(w.abs(), self.w_scale, out=column)
            elif name == "g0_over_mean_abs":
                torch.div(g, self.g_scale, out=column)
            elif name == "abs_g0_over_mean_abs":
                torch.div(g.abs(), self.g_scale, out=column)
            elif name == "abs_w0g0_over_mean":
                torch.div((w * g).abs_(), self.wg_scale, out=column)
            elif name == "rank_abs_w0":
                column.copy_(self.rank_w[start:stop])
            elif name == "rank_abs_w0g0":
                column.copy_(self.rank_wg[start:stop])
            elif name == "log_fan_in":
                column.fill_(math.log(self.layer.fan_in))
            elif name == "log_fan_out":
                column.fill_(math.log(self.layer.fan_out))
            elif name == "relative_depth":
                column.fill_(float(self.layer.relative_depth))
            elif name == "is_conv":
                column.fill_(1.0 if self.layer.kind == "conv" else 0.0)
            elif name == "log_numel":
                column.fill_(math.log(self.layer.numel))
            elif name == "input_std_rel":
                torch.div(self.input_std[start:stop], self.input_std_scale, out=column)
            elif name in self.unit_norms:
                index, norms, scale = self.unit_norms[name]
                torch.div(norms[index[start:stop]], scale, out=column)
            else:  # pragma: no cover - guarded by feature_names
                raise ValueError(name)
        return matrix


def iter_feature_matrices(features: InitialFeatures, feature_set: str = "default"):  # noqa: ANN201
    """Yield ``(layer, matrix)`` for every prunable tensor of ``features``, one tensor at a time (bounded memory)."""
    for layer, columns in iter_feature_columns(features, feature_set):
        yield layer, columns.rows(0, columns.n)


def iter_feature_columns(
    features: InitialFeatures, feature_set: str = "default", prefetch: bool = False
) -> Iterator[tuple[LayerContext, LayerFeatureColumns]]:
    """Yield ``(layer, columns)`` for every prunable tensor; ``columns.rows(start, stop)`` builds feature rows.

    With ``prefetch``, one background thread computes the next tensor's statistics (its within-tensor sorts cost the
    most and run on one core) while the caller scores the current tensor, so scoring keeps two cores busy; at most
    two tensors' statistics are alive at once. Without it, memory stays lower (one tensor's statistics, and no second
    allocator arena).
    """
    needs_units = bool(set(feature_names(feature_set)) & set(UNIT_FEATURES))
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


def with_density(features: torch.Tensor, density: float) -> torch.Tensor:
    """Append the input of the density-conditioned (membership) target: ``log(density)`` for every row."""
    column = torch.full((features.shape[0], 1), float(math.log(density)), dtype=features.dtype)
    return torch.cat([features, column], dim=1)
