"""Magnitude pruning: keep the weights of largest absolute value."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Criterion, ScoringContext, register_criterion


@register_criterion
@dataclass
class MagnitudeCriterion(Criterion):
    """Score ``s = |w|``.

    At initialization this is the magnitude-at-init baseline; on trained weights it is the pruning criterion of
    iterative rewind pruning (Frankle & Carbin 2019, arXiv 1803.03635) that generates AutoSparse's surviving scores
    (arXiv 2408.14757).
    """

    name = "magnitude"
    writes_weights = False

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        return {name: p.param.detach().abs().clone() for name, p in context.params.items()}
