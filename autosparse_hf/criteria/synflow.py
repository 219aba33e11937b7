"""SynFlow: iterative synaptic flow pruning, data-free (Tanaka et al. 2020, arXiv 2006.05467)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..allocation.base import ExplicitCounts
from ..gradients import take_batches
from ..masks import select_masks
from .base import Criterion, ScoringContext, register_criterion


@register_criterion
@dataclass
class SynFlowCriterion(Criterion):
    """Iterative SynFlow with an exponential schedule.

    Every parameter is replaced by its absolute value, the model (in eval mode, so batch norm uses its running
    statistics) is fed an all-ones input, ``R = sum(output)``, and the score is ``|w * dR/dw|``. Over ``rounds``
    rounds the density goes ``d^(k / rounds)``, k = 1..rounds, towards the target density ``d``, re-scoring the
    surviving weights each round (this is what avoids layer collapse).

    The returned scores encode the whole procedure so that a global top-k at the target sparsity reproduces the
    iterative mask exactly: a weight removed in round ``r`` scores ``r + 0.5 * s_r / max(s_r)``, a survivor scores
    ``rounds + s / max(s)`` (its last SynFlow score), and a weight already pruned scores ``-1``. Models that take
    token ids get the all-ones signal as input embeddings (see the family adapters).

    Inside layer budgets fixed before scoring (``ScoringContext.budgets``: an IRP ticket's or learned budgets, e.g.
    ``prune_at_init(model, "synflow", 0.98, budgets="learned", predictor=...)``), every round keeps
    ``numel * (count / numel) ^ (k / rounds)`` weights in each tensor instead of one global threshold: the same
    iterative re-scoring, inside fixed per-tensor budgets, so a per-tensor top-k of ``count`` weights reproduces the
    final round's mask.

    Args:
        rounds: Pruning iterations (100 in the paper).
        budgets: Kept weights per tensor at the target sparsity, fixed with the criterion (then they are its default
            layer budgets); ``None`` to use the allocation's counts, or SynFlow's global threshold without them.
    """

    name = "synflow"
    rounds: int = 100
    budgets: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        model, params, family = context.model, context.params, context.family
        batch = take_batches(context.dataloader, 1, "synflow")[0] if context.dataloader is not None else None
        inputs = family.synflow_inputs(model, batch)
        model.eval()
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
        magnitudes = {n: p.param.detach().clone() for n, p in params.items()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.param.requires_grad_(True)
        mask = {n: (context.existing[n].bool() if context.existing is not None else torch.ones_like(m, dtype=torch.bool))
                for n, m in magnitudes.items()}
        result = {n: torch.where(mask[n], 0.0, -1.0).to(torch.float64) for n in params}
        target_density = 1.0 - context.sparsity
        total = sum(m.numel() for m in mask.values())
        budgets = self.budgets if self.budgets is not None else context.budgets
        if budgets is not None:
            missing = sorted(set(params) - set(budgets))
            if missing:
                raise ValueError(f"budgets lack prunable tensors {missing}")
        for k in range(1, self.rounds + 1):
            scores = self._synflow_scores(context, inputs, magnitudes, mask)
            if budgets is None:
                density = target_density ** (k / self.rounds)
                alive = sum(int(m.sum()) for m in mask.values())
                density = min(density, alive / total)
                new_mask = select_masks(scores, 1.0 - density, existing=mask)
            else:
                counts = {n: self._round_count(mask[n], budgets[n], k) for n in params}
                kept = sum(counts.values())
                new_mask = select_masks(scores, 1.0 - kept / total, scope="counts", layer_counts=counts, existing=mask)
            peak = max(float(s.max()) for s in scores.values()) or 1.0
            for n in params:
                removed = mask[n] & ~new_mask[n]
                result[n] = torch.where(removed, (k - 1) + 0.5 * scores[n].double() / peak, result[n])
            mask = dict(new_mask)
            if k == self.rounds:
                for n in params:
                    result[n] = torch.where(mask[n], self.rounds + scores[n].double() / peak, result[n])
        return result

    def default_budgets(self) -> Any:
        return ExplicitCounts(dict(self.budgets)) if self.budgets is not None else "global"

    def _round_count(self, alive: torch.Tensor, final: int, k: int) -> int:
        """Weights a tensor keeps after round ``k``: its own exponential schedule towards ``final``, never reviving."""
        numel = alive.numel()
        if k == self.rounds:
            count = final
        else:
            count = round(numel * (max(final, 0) / numel) ** (k / self.rounds))
        return int(min(max(count, final), int(alive.sum())))

    def _synflow_scores(self, context, inputs, magnitudes, mask) -> dict[str, torch.Tensor]:
        params = context.params
        with torch.no_grad():
            for n, p in params.items():
                p.param.copy_(magnitudes[n] * mask[n])
                p.param.grad = None
        output = context.family.synflow_output(context.model, inputs)
        output.sum().backward()
        return {
            n: (p.param.detach() * p.param.grad).abs() if p.param.grad is not None else torch.zeros_like(p.param)
            for n, p in params.items()
        }
