"""SynFlow: iterative synaptic flow pruning, data-free (Tanaka et al. 2020, arXiv 2006.05467)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..allocation.base import ExplicitCounts
from ..gradients import take_batches
from ..masks import num_to_keep, select_masks
from ..masks.topk import top_count
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

    Each round is the selection ``select_masks(scores, 1 - density, existing=mask)`` (or its ``scope="counts"``
    form), run on the surviving weights only: the positions of the survivors are kept from round to round (they only
    shrink), so a round gathers their scores, keeps the best (:func:`autosparse_hf.masks.selection.top_count`, ties in
    parameter order, then position, as ``select_masks`` breaks them) and touches only the weights it removes. The
    scores are the same, bit for bit, as those of calling ``select_masks`` on whole tensors every round.

    Args:
        rounds: Pruning iterations (100 in the paper).
        budgets: Kept weights per tensor at the target sparsity, fixed with the criterion (then they are its default
            layer budgets); ``None`` to use the allocation's counts, or SynFlow's global threshold without them.

    Example:
        ```python
        >>> scores = compute_scores(model, SynFlowCriterion(rounds=100), sparsity=0.98)
        ```
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
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.param.requires_grad_(True)
        mask = {n: (context.existing[n].bool() if context.existing is not None else torch.ones_like(p.param, dtype=torch.bool))
                for n, p in params.items()}
        result = {n: torch.where(mask[n], 0.0, -1.0).to(torch.float64).contiguous() for n in params}
        with torch.no_grad():
            for n, p in params.items():
                p.param.mul_(mask[n].to(p.param.device))  # |w| * mask; later rounds only zero what they remove
        finite_params = all(bool(torch.isfinite(p.param).all()) for p in params.values())
        # Flat positions of the surviving weights, per tensor, increasing: they only shrink from round to round.
        # int32 where it fits: half the bytes to gather with and to compact every round.
        alive = {n: _positions(mask[n].reshape(-1).to(p.param.device)) for n, p in params.items()}
        del mask
        budgets = self.budgets if self.budgets is not None else context.budgets
        if budgets is not None:
            missing = sorted(set(params) - set(budgets))
            if missing:
                raise ValueError(f"budgets lack prunable tensors {missing}")
        for k in range(1, self.rounds + 1):
            self._backward(context, inputs)
            survivors, flat = self._survivor_scores(params, alive) if finite_params else (None, None)
            keeps = self._select_round(params, survivors, flat, alive, budgets, k, 1.0 - context.sparsity)
            if survivors is None:  # not reached: select_masks rejects the non-finite scores of such a round
                survivors = {n: s.reshape(-1)[alive[n]] for n, s in self._scores(params).items()}
            # The largest score of the round: pruned weights score exactly 0 (their weight is 0, their gradient finite).
            peak = max((float(s.max()) for s in survivors.values() if s.numel()), default=0.0) or 1.0
            for n, p in params.items():
                keep = keeps[n]
                gone = torch.nonzero(~keep).squeeze(1)  # a few per cent of the survivors
                removed = alive[n].index_select(0, gone)
                value = (k - 1) + 0.5 * survivors[n].index_select(0, gone).double() / peak
                result[n].view(-1)[removed.to(result[n].device)] = value
                _zero_positions(p.param, removed)
                alive[n] = torch.masked_select(alive[n], keep)
                if k == self.rounds:
                    value = self.rounds + torch.masked_select(survivors[n], keep).double() / peak
                    result[n].view(-1)[alive[n].to(result[n].device)] = value
        return result

    def default_budgets(self) -> Any:
        return ExplicitCounts(dict(self.budgets)) if self.budgets is not None else "global"

    def _round_count(self, numel: int, alive: int, final: int, k: int) -> int:
        """Weights a tensor keeps after round ``k``: its own exponential schedule towards ``final``, never reviving."""
        if k == self.rounds:
            count = final
        else:
            count = round(numel * (max(final, 0) / numel) ** (k / self.rounds))
        return int(min(max(count, final), alive))

    def _select_round(
        self,
        params: dict[str, Any],
        survivors: dict[str, torch.Tensor] | None,
        flat: torch.Tensor | None,
        alive: dict[str, torch.Tensor],
        budgets: Any,
        k: int,
        target_density: float,
    ) -> dict[str, torch.Tensor]:
        """Which survivors round ``k`` keeps: one boolean per entry of ``survivors[name]``.

        The same selection as ``select_masks(scores, sparsity, existing=mask)`` (global) or with
        ``scope="counts"`` (inside budgets), on the survivors only. Whenever ``select_masks`` would refuse the round
        (non-finite scores: ``survivors`` is ``None``; an impossible count) it runs on whole tensors, so that the
        error is its own.
        """
        n_alive = {n: a.numel() for n, a in alive.items()}
        total = sum(p.param.numel() for p in params.values())
        counts: dict[str, int] | None = None
        if budgets is None:
            density = min(target_density ** (k / self.rounds), sum(n_alive.values()) / total)
            sparsity = 1.0 - density
        else:
            counts = {n: self._round_count(p.param.numel(), n_alive[n], budgets[n], k) for n, p in params.items()}
            sparsity = 1.0 - sum(counts.values()) / total
        if survivors is not None and 0.0 <= sparsity < 1.0:
            if counts is None and num_to_keep(total, sparsity) <= sum(n_alive.values()):
                if flat is None:
                    flat = torch.cat([survivors[n] for n in params])
                kept = top_count(flat, num_to_keep(total, sparsity))
                return dict(zip(params, torch.split(kept, [n_alive[n] for n in params]), strict=True))
            if (
                counts is not None
                and num_to_keep(total, sparsity) == sum(counts.values())
                and all(0 <= counts[n] <= n_alive[n] for n in params)
            ):
                return {n: top_count(survivors[n], counts[n]) for n in params}
        return self._select_round_on_tensors(self._scores(params), alive, sparsity, counts)

    @staticmethod
    def _select_round_on_tensors(
        scores: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], sparsity: float, counts: dict[str, int] | None
    ) -> dict[str, torch.Tensor]:
        """The round through ``select_masks`` on whole tensors (what raises its errors for rounds it refuses)."""
        existing = {}
        for n, s in scores.items():
            mask = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
            mask[alive[n]] = True
            existing[n] = mask.reshape(s.shape)
        if counts is None:
            new = select_masks(scores, sparsity, existing=existing)
        else:
            new = select_masks(scores, sparsity, scope="counts", layer_counts=counts, existing=existing)
        return {n: new[n].reshape(-1)[alive[n]] for n in scores}

    @staticmethod
    def _backward(context: ScoringContext, inputs: dict[str, torch.Tensor]) -> None:
        """One SynFlow pass: ``R = sum(output)`` of the all-ones input, backpropagated into the parameters' grads."""
        for p in context.params.values():
            p.param.grad = None
        output = context.family.synflow_output(context.model, inputs)
        output.sum().backward()

    @staticmethod
    def _scores(params: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``|w * dR/dw|`` on whole tensors."""
        return {
            n: (p.param.detach() * p.param.grad).abs() if p.param.grad is not None else torch.zeros_like(p.param)
            for n, p in params.items()
        }

    @staticmethod
    def _survivor_scores(
        params: dict[str, Any], alive: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor] | None, torch.Tensor | None]:
        """``|w * dR/dw|`` at the surviving positions only, per tensor, and all of them in parameter order.

        The per-tensor scores are views of one buffer (the concatenation a global selection reads) when the
        parameters share a dtype and device; otherwise the second value is ``None``. ``(None, None)`` if a gradient
        may not be finite somewhere. Reading only the survivors is exact: a pruned weight is 0, so its score is 0 for
        any finite gradient; a non-finite gradient (which makes some score NaN or infinite) is found by one sum per
        tensor.
        """
        kinds = {(p.param.dtype, p.param.device) for p in params.values()}
        flat = None
        if len(kinds) == 1:
            dtype, device = kinds.pop()
            flat = torch.empty(sum(a.numel() for a in alive.values()), dtype=dtype, device=device)
        survivors, offset = {}, 0
        for n, p in params.items():
            index, grad = alive[n], p.param.grad
            out = flat[offset : offset + index.numel()] if flat is not None else None
            offset += index.numel()
            if grad is None:
                survivors[n] = out.zero_() if out is not None else p.param.new_zeros(index.numel())
                continue
            # A sum is finite only if every term is (an overflowing sum of finite terms merely takes the slow path).
            if not math.isfinite(float(grad.sum() if grad.dtype in (torch.float32, torch.float64) else grad.float().sum())):
                return None, None
            weight = p.param.detach().reshape(-1).index_select(0, index)
            survivors[n] = torch.mul(weight, grad.reshape(-1).index_select(0, index), out=out).abs_()
        return survivors, flat


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Flat positions of the true entries of the 1-D ``mask``, increasing; int32 when they fit."""
    positions = torch.nonzero(mask).squeeze(1)
    return positions.to(torch.int32) if mask.numel() < 2**31 else positions


@torch.no_grad()
def _zero_positions(param: torch.Tensor, positions: torch.Tensor) -> None:
    """Set the weights at flat (row-major) ``positions`` of ``param`` to zero, in place, whatever its strides."""
    if param.is_contiguous():
        param.view(-1)[positions] = 0.0
    else:
        param[torch.unravel_index(positions.long(), param.shape)] = 0.0
