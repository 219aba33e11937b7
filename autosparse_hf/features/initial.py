"""The raw features of a model at initialization: ``w0``, ``g0``, layer context and per-unit input spread.

The IRP callback records these when it starts and AutoS computes them, with this same code, for the model it prunes;
:mod:`.columns` turns them into the predictor's feature columns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..families import PrunableParameter, get_family, get_prunable_parameters
from ..gradients import average_gradients, take_batches
from ..state import preserved_model_state, revived_zero_norm_scales
from .context import LayerContext, layer_contexts, unit_indices

# Version of what the features mean (the raw record and the columns computed from it). A predictor records the
# version it was trained with; bump it when an existing column changes meaning, not when a column is added.
FEATURE_SCHEMA_VERSION = 2


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
        schema_version: ``FEATURE_SCHEMA_VERSION`` of the code that computed them.
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

    def _hook(self, name: str, kind: str) -> Callable[[nn.Module, tuple], None]:
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
        include: Shell-style name patterns of parameters to add to the default prunable set (only without
            ``params``).
        exclude: Shell-style name patterns of parameters to leave out; wins over ``include`` (only without
            ``params``).
        copy_weights: Store copies of the weights as ``w0`` (keep it for anything that outlives a change of the
            weights, such as an IRP record); ``False`` stores views of the parameters, for a caller that uses the
            features while the weights stay as they are (a criterion scoring a model), one model's size less.
        preserve_state: Snapshot and restore the model (weights, buffers, gradients, modes, RNG) around the
            gradient computation. ``False`` only inside a caller that already does so (criteria run inside
            ``compute_scores``' ``preserved_model_state``), one model's size less.
    """
    params = params if params is not None else get_prunable_parameters(model, include, exclude)
    # The same scoring view as the criteria (compute_scores): zero-initialized normalization scales count as ones, so
    # the gradient features of a timm residual block are not all zero. With preserve_state=False the caller (a
    # criterion inside compute_scores) already applies it.
    with (
        # weights=False: nothing here writes a weight (gradients and input statistics are read; the zero-initialized
        # norm scales are revived and put back by revived_zero_norm_scales), so no copy of the model is made.
        preserved_model_state(model, weights=False) if preserve_state else contextlib.nullcontext(),
        revived_zero_norm_scales(model) if preserve_state else contextlib.nullcontext(),
    ):
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
