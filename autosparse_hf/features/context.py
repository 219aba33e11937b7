"""Layer context: where a prunable tensor sits in the network, and which units each of its weights connects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..families import PrunableParameter


@dataclass(frozen=True)
class LayerContext:
    """Where a prunable tensor sits in the network.

    Attributes:
        name: Parameter name.
        kind: ``"linear"``, ``"conv"``, ``"embedding"`` or ``"other"`` (see ``autosparse_hf.families.layer_kind``).
        fan_in: Inputs per output unit.
        fan_out: Output units.
        depth: Position among the prunable tensors (0 for the first).
        relative_depth: ``depth`` scaled to [0, 1] (0 for the first tensor, 1 for the last).
        numel: Number of weights.
        shape: Shape of the tensor.
        transposed: Stored ``(in, out)`` (GPT-2's ``Conv1D``) instead of ``(out, in, *kernel)``.
    """

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
