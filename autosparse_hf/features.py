"""Per-weight features at initialization, one implementation for score datasets and for pruning.

AutoSparse (arXiv 2408.14757) predicts how long a weight survives iterative rewind pruning from what is known at
initialization: the initial weight ``w0`` and the initial gradient ``g0``. Here ``g0`` is averaged over a fixed
number of batches (not summed over the training set as in the reference code), in eval mode. Layer context
(kind, fan-in, fan-out, relative depth, size) describes where the weight sits, which is what lets a predictor move
between architectures. The IRP callback records these when it starts and AutoS computes them, with this same code,
for the model it prunes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .families import PrunableParameter, get_family, get_prunable_parameters
from .gradients import average_gradients, take_batches
from .state import preserved_model_state

FEATURE_SCHEMA_VERSION = 1


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
    """

    weights: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    layers: list[LayerContext]
    num_batches: int
    schema_version: int = FEATURE_SCHEMA_VERSION

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers)


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
        )
        for p in params.values()
    ]


def _broadcast(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's values on every rank (ranks see different data shards; features must agree)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
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
) -> InitialFeatures:
    """``w0``, ``g0`` and layer context of every prunable weight; the model is left exactly as found.

    Args:
        model: The model at initialization.
        dataloader: Batches (dicts) for ``g0``.
        num_batches: How many batches ``g0`` averages over.
        params: Prunable parameters (default: ``get_prunable_parameters(model, include, exclude)``).
    """
    params = params if params is not None else get_prunable_parameters(model, include, exclude)
    batches = take_batches(dataloader, num_batches, "the initial-gradient feature")
    with preserved_model_state(model):
        grads = average_gradients(model, params, batches, get_family(model))
    weights = {name: p.param.detach().clone() for name, p in params.items()}
    grads = _broadcast({name: g.contiguous() for name, g in grads.items()})
    weights = _broadcast({name: w.contiguous() for name, w in weights.items()})
    return InitialFeatures(weights=weights, gradients=grads, layers=layer_contexts(params), num_batches=len(batches))
