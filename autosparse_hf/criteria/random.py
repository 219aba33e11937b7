"""Random pruning: uniform random scores (the baseline every criterion must beat)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Criterion, ScoringContext, register_criterion


@register_criterion
@dataclass
class RandomCriterion(Criterion):
    """Score ``s = u``, ``u ~ U(0, 1)`` i.i.d. per weight.

    With ``seed=None`` the numbers come from torch's global generator, whose state is restored afterwards, so the
    same global seed gives the same mask. Random pruning with ERK budgets (``scope="erk"``) is a strong baseline
    (Evci et al. 2020, arXiv 1911.11134; see also AutoSparse, arXiv 2408.14757).
    """

    name = "random"
    writes_weights = False
    seed: int | None = None

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        return {
            name: torch.rand(p.param.shape, generator=generator).to(p.param.device)
            for name, p in context.params.items()
        }
