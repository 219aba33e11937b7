"""Iterative SNIP and FORCE: progressive skeletonization at initialization (de Jorge et al. 2021, arXiv 2006.09081)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch

from ..allocation.base import ExplicitCounts
from ..gradients import loss_with, require_grad_only
from ..heap import release_free_memory
from ..masks import num_to_keep
from ..masks.topk import top_count, top_count_across
from .base import Criterion, ScoringContext, register_criterion
from .buffers import FlatLayout, chunks, record_step, step_dtype
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
    tensor follows its own schedule (the same ``schedule``) towards its count and each step keeps a per-tensor top-k,
    as SynFlow does.

    The returned scores encode the procedure so that the selection at the target sparsity reproduces its final mask
    exactly: for ``iter_snip`` a weight removed at step ``k`` scores ``k - 1 + 0.5 s / max(s)`` (``s`` its saliency
    at that step) and a survivor ``steps + s / max(s)``; for ``force`` a final survivor scores ``1 + s / max(s)``
    and every other weight ``0.5 s / max(s)`` (``s`` the last step's saliency); weights pruned before scoring
    (``ScoringContext.existing``) score ``-1``. Ties within a step go to the larger ``|w0|``.

    Cost: ``steps * num_batches`` forward and backward passes, plus a linear-time selection per step.

    Memory (GPT-2 small: about 2.5x its parameters' bytes at the peak for FORCE, 2.8x for Iter SNIP): the model is
    never written; each step evaluates the loss at ``w0 * m`` through ``torch.func.functional_call`` on one flat
    buffer of masked weights, built for the step and freed after its backward pass, with gradients for those weights
    only, each turned into saliencies as soon as backward completes it. The saliencies of
    all weights live in one flat float32 vector that the global selection reads in place; Iter SNIP keeps a weight's
    saliency at its removal there too (it is never eligible again) and its step in a small integer vector, so the
    float64 scores are built once, at the end, by the same arithmetic as a per-step record; ties go to ``|w0|`` read
    at the tied entries only.

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
    writes_weights = False
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
        model, params = context.model, context.params
        batches = self.read_batches(context)
        budgets = self.budgets if self.budgets is not None else context.budgets
        if budgets is not None:
            missing = sorted(set(params) - set(budgets))
            if missing:
                raise ValueError(f"{self.name}: budgets lack prunable tensors {missing}")
        # w0: the model's own tensors, read only (the loss sees the masked weights through functional_call).
        layout = FlatLayout({n: p.param.detach() for n, p in params.items()})
        device = layout.device
        allowed = (
            torch.cat([context.existing[n].bool().to(device).reshape(-1) for n in layout.names])
            if context.existing is not None and layout.total
            else None
        )  # None: every weight may be kept
        mask = allowed.clone() if allowed is not None else torch.ones(layout.total, dtype=torch.bool, device=device)
        # The current step's saliencies |w0 * g| of the eligible weights, -1 elsewhere for FORCE; Iter SNIP keeps the
        # saliency at removal of the weights it removed (never eligible again) and their step in ``removed_at``.
        # FORCE rewrites every saliency each step: its vector is made at the start of a step's pass (backward writes
        # each tensor's saliencies into it as it goes) and dropped after the step's selection (kept after the last).
        saliency = None if self.revives else torch.zeros(layout.total, dtype=torch.float32, device=device)
        removed_at = None if self.revives else torch.zeros(layout.total, dtype=step_dtype(self.steps), device=device)
        peaks: list[float] = [1.0]  # peaks[k]: step k's largest eligible saliency (Iter SNIP's encoding scale)
        target = 1.0 - context.sparsity
        require_grad_only(model, [])  # eval mode; no parameter of the model takes a gradient
        bar = scoring_progress(self.steps, f"{self.name} steps", self.progress, unit="step")
        try:
            for k in range(1, self.steps + 1):
                eligible = allowed if self.revives else mask
                saliency, eligible_peak = self._saliency(context, layout, mask, eligible, batches, saliency)
                keep, peak = self._select(saliency, eligible, layout, budgets, k, target, eligible_peak)
                if self.revives and k < self.steps:
                    saliency = None
                if removed_at is not None:  # step k's removals: the survivors it does not keep (keep lies inside mask)
                    record_step(removed_at, torch.bitwise_xor(mask, keep), k)
                peaks.append(peak)
                mask = keep
                bar.update(1)
        finally:
            bar.close()
        # Per-tensor copies of the saliencies, so that each goes once its float64 scores exist (the flat vector
        # and all the scores would be three vectors' worth of float32 at once; this way it is at most two).
        pieces = {n: layout.view(saliency, n).clone() for n in layout.names}
        del saliency
        result = self._finish(layout, pieces, mask, allowed, removed_at, peaks)
        logger.info(
            "%s: %d steps over %d weights in %.1f s", self.name, self.steps, layout.total, time.perf_counter() - started
        )
        return result

    def _saliency(
        self,
        context: ScoringContext,
        layout: FlatLayout,
        mask: torch.Tensor,
        eligible: torch.Tensor | None,
        batches: list[Any],
        saliency: torch.Tensor | None,
    ) -> tuple[torch.Tensor, float]:
        """Write ``|w0 * g|`` of the eligible weights into ``saliency`` (FORCE: -1 at the others; a new vector when
        ``None``) and return it with Iter SNIP's largest eligible saliency (0.0 for FORCE), ``g`` the loss gradient
        at ``w0 * mask`` averaged over ``batches``; the masked weights exist only for this pass.

        Each tensor's saliency is written as soon as backward has its (last batch's accumulated) gradient, in a hook,
        and the gradient freed: no full set of gradients (on GPT-2 small, 0.7x the model's parameter bytes) is ever
        held at once."""
        if saliency is None:
            saliency = torch.empty(layout.total, dtype=torch.float32, device=layout.device)
        masked = layout.masked(mask)
        leaves = [masked[n] for n in layout.names]
        written: set[str] = set()
        last, batch_index = len(batches) - 1, [0]
        peaks = [0.0]

        def write(name: str, grad: torch.Tensor | None, masked_weight: torch.Tensor) -> None:
            w0 = layout.weights[name]
            # Iter SNIP multiplies by the masked weights (w0 where eligible, bit for bit): its ineligible entries read 0,
            # so the largest value is the largest eligible saliency, with no masked copy to take it from.
            factor = w0 if self.revives else masked_weight
            value = (grad.mul_(factor).abs_() if grad is not None else torch.zeros_like(w0)).reshape(-1)
            view = layout.view(saliency, name)
            if not self.revives and value.numel():
                top = float(value.max())
                if not math.isfinite(top):  # (a non-finite gradient; outside the eligible weights it is not read)
                    top = float(torch.where(layout.view(eligible, name), value, -math.inf).max())
                peaks.append(top)
            if eligible is None:
                view.copy_(value)
            elif self.revives:
                view.copy_(value).masked_fill_(~layout.view(eligible, name), -1.0)
            else:
                # Entries outside ``mask`` keep the saliency they were removed with (``out`` aliases that input
                # elementwise only).
                torch.where(layout.view(eligible, name), value.float(), view, out=view)
            written.add(name)

        def fold(leaf: torch.Tensor, name: str) -> None:
            if batch_index[0] == last:  # the gradient is complete: sum over batches in order, as ``.grad`` does
                grad, leaf.grad = leaf.grad, None
                write(name, grad, leaf.detach())

        handles = [masked[n].register_post_accumulate_grad_hook(partial(fold, name=n)) for n in layout.names]
        try:
            for i, batch in enumerate(batches):
                batch_index[0] = i
                loss = loss_with(context.model, context.family, batch, masked)
                if loss.requires_grad:  # else no prunable weight reaches the loss: every gradient is zero
                    (loss / len(batches)).backward(inputs=leaves)
                del loss
        finally:
            for handle in handles:
                handle.remove()
        for n in layout.names:  # not reached by the last batch: what earlier batches accumulated, or zeros
            if n not in written:
                grad, masked[n].grad = masked[n].grad, None
                write(n, grad, masked[n].detach())
        del masked, leaves
        release_free_memory()  # the pass's activations, before the selection and the next pass
        return saliency, max(peaks)

    def _select(
        self,
        values: torch.Tensor,
        eligible: torch.Tensor | None,
        layout: FlatLayout,
        budgets: Any,
        k: int,
        target: float,
        eligible_peak: float,
    ) -> tuple[torch.Tensor, float]:
        """Step ``k``'s mask (the top of the eligible saliencies, globally or inside per-tensor counts) and the largest
        eligible saliency (1 when there is none or it is 0), the scale of ``iter_snip``'s encoding. FORCE's
        ineligible weights hold -1 in ``values``, below every saliency (>= 0): a top-k within the eligible count never
        takes one; Iter SNIP's hold the saliency they were removed with, and only the eligible ones are candidates."""
        total = layout.total
        if budgets is None:
            count = num_to_keep(total, 1.0 - self.density(k, target)) if k < self.steps else num_to_keep(total, 1.0 - target)
            count = min(count, int(torch.count_nonzero(eligible)) if eligible is not None else total)
            # Only the eligible weights are candidates: no copy of the saliencies with the others masked out.
            keep = _top_count_by_magnitude(values, count, layout, eligible)
            peak = (float(values.max()) if total else 0.0) if self.revives else eligible_peak
            return keep, max(peak, 0.0) or 1.0
        keep = torch.zeros(total, dtype=torch.bool, device=values.device)
        peak = 0.0
        for n in layout.names:
            numel = layout.numel[n]
            final = int(budgets[n])
            if not 0 <= final <= numel:
                raise ValueError(f"{self.name}: budget of {n!r} is {final}, outside [0, {numel}]")
            piece = layout.view(values, n)
            if not self.revives:  # ineligible at -1 (a copy of this tensor's piece only)
                piece = torch.where(layout.view(eligible, n), piece, -1.0)
            n_eligible = int(torch.count_nonzero(layout.view(eligible, n))) if eligible is not None else numel
            count = scheduled_count(numel, final, k, self.steps, n_eligible, self.schedule)
            magnitude = partial(_magnitude_at, layout.weights[n])  # read at the tied entries only
            layout.view(keep, n).copy_(top_count(piece, count, tie_break=magnitude))
            if numel:
                peak = max(peak, float(piece.max()))
        return keep, max(peak, 0.0) or 1.0

    def _finish(
        self,
        layout: FlatLayout,
        saliency: dict[str, torch.Tensor],
        mask: torch.Tensor,
        allowed: torch.Tensor | None,
        removed_at: torch.Tensor | None,
        peaks: list[float],
    ) -> dict[str, torch.Tensor]:
        """The float64 scores encoding the final mask and the saliencies (see the class docstring); ``saliency``
        holds each tensor's (1-D) and is emptied as the scores are built."""
        raise NotImplementedError


def _magnitude_at(weight: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``|w0|`` (float32) of one tensor at its flat ``positions``: the tie-break, read at the tied entries only."""
    return weight.reshape(-1).index_select(0, positions.to(weight.device)).abs().float()


def _top_count_by_magnitude(
    values: torch.Tensor, count: int, layout: FlatLayout, candidates: torch.Tensor | None = None
) -> torch.Tensor:
    """``top_count(values, count, tie_break=|w0|)`` among the ``candidates`` (flat booleans; ``None``: all) without a
    flat copy of ``|w0|`` or of the values: each tensor's magnitudes are read only at its entries tied at the
    threshold, and only when those ties decide which weights are kept."""
    kept = top_count_across(
        [layout.view(values, n) for n in layout.names],
        [layout.view(candidates, n) if candidates is not None else None for n in layout.names],
        count,
        tie_break=[partial(_magnitude_at, layout.weights[n]) for n in layout.names],
    )
    return torch.cat(kept) if kept else torch.zeros(0, dtype=torch.bool, device=values.device)


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

    def _finish(self, layout, saliency, mask, allowed, removed_at, peaks) -> dict[str, torch.Tensor]:  # noqa: ANN001
        # A weight removed at step k scores (k - 1) + 0.5 s / peak_k with s its saliency then; a survivor scores
        # steps + s / peak, s its last saliency and peak the largest among survivors; the rest (pruned before) -1.
        peak = _peak(saliency, mask, layout)
        scales = torch.tensor(peaks, dtype=torch.float64, device=mask.device)
        result = {}
        for n in layout.names:
            values, kept, step = saliency.pop(n), layout.view(mask, n), layout.view(removed_at, n)
            out = torch.empty(values.numel(), dtype=torch.float64, device=values.device)
            for part in chunks(values.numel()):  # float64 transients of one chunk, not of the whole tensor
                at = step[part].long()  # 0 (scale 1) where nothing was removed: those entries are not read
                scaled = values[part].double()
                removed = (at - 1).double() + 0.5 * scaled / scales[at]
                torch.where(kept[part], self.steps + scaled / peak, torch.where(at > 0, removed, -1.0), out=out[part])
                del at, scaled, removed
            result[n] = out.view(layout.weights[n].shape)
            del values
        return result


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

    def _finish(self, layout, saliency, mask, allowed, removed_at, peaks) -> dict[str, torch.Tensor]:  # noqa: ANN001
        # A final survivor scores 1 + s / peak, every other allowed weight 0.5 s / peak (s the last step's saliency,
        # peak the largest allowed one), weights pruned before scoring -1.
        peak = _peak(saliency, allowed, layout)
        result = {}
        for n in layout.names:
            values = saliency.pop(n)
            kept = layout.view(mask, n)
            eligible = layout.view(allowed, n) if allowed is not None else None
            out = torch.empty(values.numel(), dtype=torch.float64, device=values.device)
            for part in chunks(values.numel()):  # float64 transients of one chunk, not of the whole tensor
                scaled = values[part].double() / peak
                others = 0.5 * scaled if eligible is None else torch.where(eligible[part], 0.5 * scaled, -1.0)
                torch.where(kept[part], 1.0 + scaled, others, out=out[part])
                del scaled, others
            result[n] = out.view(layout.weights[n].shape)
            del values
        return result


def _peak(values: dict[str, torch.Tensor], where: torch.Tensor | None, layout: FlatLayout) -> float:
    """The largest of ``values`` (per tensor, 1-D) at ``where`` (flat; ``None``: everywhere), 1 when there is none or
    it is 0: the scale of the encoding."""
    peak = 0.0
    for n in layout.names:
        piece = values[n] if where is None else values[n][layout.view(where, n)]
        if piece.numel():
            peak = max(peak, float(piece.max()))
    return peak or 1.0
