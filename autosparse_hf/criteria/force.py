"""Iterative SNIP and FORCE: progressive skeletonization at initialization (de Jorge et al. 2021, arXiv 2006.09081)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..allocation.base import ExplicitCounts
from ..gradients import average_gradients
from ..masks import num_to_keep
from ..masks.topk import top_count
from .base import Criterion, ScoringContext, register_criterion
from .progress import scoring_progress
from .schedule import scheduled_count

logger = logging.getLogger(__name__)

SCHEDULES = ("exp", "linear")


@dataclass
class ProgressiveSensitivity(Criterion):
    """Connection sensitivity re-scored over a schedule of pruning steps (shared by ``iter_snip`` and ``force``).

    At step ``k = 1..steps`` the kept density is ``d_k = d^(k / steps)`` (``schedule="exp"``, the paper's default) or
    ``d_k = 1 - k (1 - d) / steps`` (``"linear"``), ``d`` the target density. Each step evaluates the loss gradient
    ``g_k = dL/dw`` at the partially pruned network ``w0 * m_{k-1}`` (``m_0`` all ones, ``num_batches`` batches,
    eval mode) and keeps the ``d_k N`` weights of largest saliency ``|w0 * g_k|`` among the eligible ones:

    - ``iter_snip`` (the paper's Iter SNIP): only the survivors of step ``k - 1`` are eligible (a pruned weight
      never returns); its saliency is SNIP's on the pruned network, ``|w0 * m_{k-1} * g_k|``.
    - ``force`` (FORCE): every weight is eligible, so a weight pruned earlier comes back when the pruned network
      needs it; its saliency ``|w0 * g_k|`` is that of the mask ``c`` in ``L(w0 * c)``, evaluated at ``c = m_{k-1}``.

    Inside layer budgets fixed before scoring (``ScoringContext.budgets``: an IRP ticket's or learned budgets), each
    tensor follows its own schedule towards its count and each step keeps a per-tensor top-k, as SynFlow does.

    The returned scores encode the procedure so that the selection at the target sparsity reproduces its final mask
    exactly: for ``iter_snip`` a weight removed at step ``k`` scores ``k - 1 + 0.5 s / max(s)`` (``s`` its saliency
    at that step) and a survivor ``steps + s / max(s)``; for ``force`` a final survivor scores ``1 + s / max(s)``
    and every other weight ``0.5 s / max(s)`` (``s`` the last step's saliency); weights pruned before scoring
    (``ScoringContext.existing``) score ``-1``. Ties within a step go to the larger ``|w0|``.

    Cost: ``steps * num_batches`` forward and backward passes, plus a linear-time selection per step.

    Args:
        steps: Pruning steps (60 in the authors' published commands for CIFAR-10 and ImageNet; not tuned here).
        schedule: ``"exp"`` (the paper's recommendation) or ``"linear"`` density decay.
        budgets: Kept weights per tensor at the target sparsity, fixed with the criterion (then they are its default
            layer budgets); ``None`` to use the allocation's counts, or one global threshold per step without them.
        progress: ``True`` shows a ``tqdm`` bar over the steps, ``False`` never; ``None`` follows the transformers
            progress-bar switch and shows the bar only for scoring that takes longer than a couple of seconds.
    """

    steps: int = 60
    schedule: str = "exp"
    budgets: dict[str, int] | None = None
    progress: bool | None = None
    needs_data = True
    revives: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"{self.name}: steps must be an integer >= 1, got {self.steps!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{self.name}: schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def default_budgets(self) -> Any:
        return ExplicitCounts(dict(self.budgets)) if self.budgets is not None else "global"

    def density(self, k: int, target: float) -> float:
        """The kept fraction after step ``k`` of the schedule towards ``target``."""
        if self.schedule == "exp":
            return target ** (k / self.steps) if target > 0 else (0.0 if k == self.steps else math.nan)
        return 1.0 - k * (1.0 - target) / self.steps

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        model, params, names = context.model, context.params, list(context.params)
        batches = self.read_batches(context)
        budgets = self.budgets if self.budgets is not None else context.budgets
        if budgets is not None:
            missing = sorted(set(params) - set(budgets))
            if missing:
                raise ValueError(f"{self.name}: budgets lack prunable tensors {missing}")
        w0 = {n: p.param.detach().clone() for n, p in params.items()}
        allowed = {
            n: (context.existing[n].bool().to(w0[n].device) if context.existing is not None
                else torch.ones_like(w0[n], dtype=torch.bool))
            for n in names
        }
        # Equal saliencies go to the larger initial magnitude, as prune_at_init's selection breaks them.
        magnitude = torch.cat([w0[n].abs().reshape(-1).float() for n in names])
        mask = dict(allowed)
        # float64: iter_snip's encoding adds a step index to a fraction of the step's largest saliency.
        result = {n: torch.full_like(w0[n], -1.0, dtype=torch.float64) for n in names}
        total = sum(w.numel() for w in w0.values())
        target = 1.0 - context.sparsity
        bar = scoring_progress(self.steps, f"{self.name} steps", self.progress, unit="step")
        try:
            for k in range(1, self.steps + 1):
                with torch.no_grad():
                    for n, p in params.items():
                        p.param.copy_(w0[n] * mask[n])
                grads = average_gradients(model, names, batches, context.family)
                eligible = allowed if self.revives else mask
                saliency = {n: (w0[n] * grads[n]).abs().float() for n in names}
                del grads
                keep, peak = self._select(saliency, eligible, magnitude, budgets, k, target, total)
                self._record(result, saliency, mask, keep, peak, k)
                mask = keep
                bar.update(1)
        finally:
            bar.close()
        self._finish(result, saliency, mask, allowed)
        logger.info("%s: %d steps over %d weights in %.1f s", self.name, self.steps, total, time.perf_counter() - started)
        return result

    def _select(
        self,
        saliency: dict[str, torch.Tensor],
        eligible: dict[str, torch.Tensor],
        magnitude: torch.Tensor,
        budgets: Any,
        k: int,
        target: float,
        total: int,
    ) -> tuple[dict[str, torch.Tensor], float]:
        """Step ``k``'s mask (the top of the eligible saliencies, globally or inside per-tensor counts) and the largest
        eligible saliency (1 when there is none or it is 0), the scale of ``iter_snip``'s encoding."""
        names = list(saliency)
        n_eligible = {n: int(eligible[n].sum()) for n in names}
        # Ineligible weights score -1, below every saliency (>= 0): a top-k within the eligible count never takes one.
        flat = {n: torch.where(eligible[n], saliency[n], -1.0).reshape(-1) for n in names}
        if budgets is None:
            count = num_to_keep(total, 1.0 - self.density(k, target)) if k < self.steps else num_to_keep(total, 1.0 - target)
            count = min(count, sum(n_eligible.values()))
            values = torch.cat([flat[n] for n in names])
            kept = top_count(values, count, tie_break=magnitude)
            pieces = torch.split(kept, [saliency[n].numel() for n in names])
            keep = {n: piece.reshape(saliency[n].shape) for n, piece in zip(names, pieces, strict=True)}
            return keep, max(float(values.max()), 0.0) or 1.0
        out, offset = {}, 0
        for n in names:
            numel = saliency[n].numel()
            final = int(budgets[n])
            if not 0 <= final <= numel:
                raise ValueError(f"{self.name}: budget of {n!r} is {final}, outside [0, {numel}]")
            count = scheduled_count(numel, final, k, self.steps, n_eligible[n])
            kept = top_count(flat[n], count, tie_break=magnitude[offset : offset + numel])
            out[n] = kept.reshape(saliency[n].shape)
            offset += numel
        peak = max((float(flat[n].max()) for n in names if flat[n].numel()), default=0.0)
        return out, max(peak, 0.0) or 1.0

    def _record(
        self,
        result: dict[str, torch.Tensor],
        saliency: dict[str, torch.Tensor],
        mask: dict[str, torch.Tensor],
        keep: dict[str, torch.Tensor],
        peak: float,
        k: int,
    ) -> None:
        """Encode the weights step ``k`` removes (``iter_snip``; FORCE encodes only the last step)."""

    def _finish(
        self,
        result: dict[str, torch.Tensor],
        saliency: dict[str, torch.Tensor],
        mask: dict[str, torch.Tensor],
        allowed: dict[str, torch.Tensor],
    ) -> None:
        """Encode the final mask and the last step's saliencies into ``result``."""
        raise NotImplementedError


@register_criterion
@dataclass
class IterSNIPCriterion(ProgressiveSensitivity):
    """Iterative SNIP (de Jorge et al. 2021, arXiv 2006.09081): SNIP re-scored on the pruned network at every step
    of a schedule; a pruned weight never returns. See :class:`ProgressiveSensitivity` for the equations, options and
    the score encoding.

    Example:
        ```python
        >>> masks = autosparse_hf.prune_at_init(model, "iter_snip", 0.99, dataloader=loader, criterion_options={"steps": 60})
        ```
    """

    name = "iter_snip"
    revives = False

    def _record(self, result, saliency, mask, keep, peak, k) -> None:  # noqa: ANN001
        for n in mask:
            gone = torch.nonzero((mask[n] & ~keep[n]).reshape(-1)).squeeze(1)  # the few weights this step removes
            value = (k - 1) + 0.5 * saliency[n].reshape(-1).index_select(0, gone).double() / peak
            result[n].view(-1).index_copy_(0, gone, value)

    def _finish(self, result, saliency, mask, allowed) -> None:  # noqa: ANN001
        peak = _peak(saliency, mask)
        for n, kept in mask.items():
            result[n][kept] = self.steps + saliency[n][kept].double() / peak


@register_criterion
@dataclass
class FORCECriterion(ProgressiveSensitivity):
    """FORCE, foresight connection sensitivity (de Jorge et al. 2021, arXiv 2006.09081): the sensitivity of the loss
    to the mask of the partially pruned network, re-scored at every step; pruned weights may return. See
    :class:`ProgressiveSensitivity` for the equations, options and the score encoding.

    Example:
        ```python
        >>> masks = autosparse_hf.prune_at_init(model, "force", 0.99, dataloader=loader)
        ```
    """

    name = "force"
    revives = True

    def _finish(self, result, saliency, mask, allowed) -> None:  # noqa: ANN001
        peak = _peak(saliency, allowed)
        for n, kept in mask.items():
            scaled = saliency[n].double() / peak
            result[n] = torch.where(kept, 1.0 + scaled, torch.where(allowed[n], 0.5 * scaled, -1.0))


def _peak(values: dict[str, torch.Tensor], where: dict[str, torch.Tensor]) -> float:
    """The largest of ``values`` at ``where`` (1 when there is none or it is 0): the scale of the encoding."""
    peak = max((float(v[where[n]].max()) for n, v in values.items() if bool(where[n].any())), default=0.0)
    return peak or 1.0
