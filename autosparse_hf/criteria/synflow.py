"""SynFlow: iterative synaptic flow pruning, data-free (Tanaka et al. 2020, arXiv 2006.05467)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..allocation.base import ExplicitCounts
from ..gradients import take_batches
from ..masks import num_to_keep, select_masks
from ..masks.topk import top_count
from .base import Criterion, ScoringContext, register_criterion
from .numerics import SignalNumerics, all_finite, check_finite_weights, gradients_finite, like_model, nonfinite_error
from .progress import scoring_progress
from .schedule import scheduled_count

logger = logging.getLogger(__name__)

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

    Numerics: the products of ``|w|`` along a deep network's paths outgrow float32 (about 1e38: efficientnet_b0's
    signal reaches 1e40, densenet121's 1e86), and saturating activations turn the overflow into NaN (a saturated
    hard-sigmoid's zero derivative times an infinite gradient in a squeeze-excitation block). A round is therefore
    computed in the model's dtype first and kept when its output, its gradients and its scores are finite, so a
    network that was finite in float32 gets exactly the scores it always got. A round that is not finite is computed again in float64
    (same function, about 1e308 of range), and so are all later rounds. Should float64 overflow too, every module's
    output whose magnitude exceeds ``2**64`` is scaled down by a power of two (exact, so the scores of a
    bias-free ReLU chain keep their ranking; in residual or non-homogeneous networks the scores become an
    approximation, with a warning). If a value is still not finite, the error names the module where it first
    appears (forward pass) or where its gradient first does (backward pass).

    Scoring shows a progress bar over the rounds and logs its wall time (``logging.INFO``): see ``progress``.

    Args:
        rounds: Pruning iterations (100 in the paper).
        budgets: Kept weights per tensor at the target sparsity, fixed with the criterion (then they are its default
            layer budgets); ``None`` to use the allocation's counts, or SynFlow's global threshold without them.
        progress: ``True`` shows a ``tqdm`` bar over the rounds, ``False`` never; ``None`` (default) follows the
            transformers progress-bar switch (``transformers.utils.logging.disable_progress_bar()``, or
            ``HF_HUB_DISABLE_PROGRESS_BARS=1``) and shows the bar only once scoring has taken ``PROGRESS_DELAY_S``
            seconds. ``criterion_options={"progress": False}`` silences it through ``prune_at_init``.

    Example:
        ```python
        >>> scores = compute_scores(model, SynFlowCriterion(rounds=100), sparsity=0.98)
        ```
    """

    name = "synflow"
    rounds: int = 100
    budgets: dict[str, int] | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {self.rounds!r}")

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        model, params, family = context.model, context.params, context.family
        started = time.perf_counter()
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
        check_finite_weights(params)
        # Flat positions of the surviving weights, per tensor, increasing: they only shrink from round to round.
        # int32 where it fits: half the bytes to gather with and to compact every round.
        alive = {n: _positions(mask[n].reshape(-1).to(p.param.device)) for n, p in params.items()}
        del mask
        budgets = self.budgets if self.budgets is not None else context.budgets
        if budgets is not None:
            missing = sorted(set(params) - set(budgets))
            if missing:
                raise ValueError(f"budgets lack prunable tensors {missing}")
        numerics = SignalNumerics(model)
        bar = scoring_progress(self.rounds, "SynFlow rounds", self.progress, unit="round")
        try:
            for k in range(1, self.rounds + 1):
                survivors, flat = self._finite_round(context, inputs, alive, numerics, k)
                keeps = self._select_round(params, survivors, flat, alive, budgets, k, 1.0 - context.sparsity)
                # The largest score of the round: pruned weights score exactly 0 (their weight is 0).
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
                bar.update(1)
        finally:
            bar.close()
            numerics.close()
        logger.info(
            "synflow: %d rounds over %d weights in %.1f s (in %s)", self.rounds, sum(r.numel() for r in result.values()),
            time.perf_counter() - started, numerics.description,
        )
        return result

    def _finite_round(
        self,
        context: ScoringContext,
        inputs: dict[str, torch.Tensor],
        alive: dict[str, torch.Tensor],
        numerics: SignalNumerics,
        k: int,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Round ``k``'s backward pass and the survivors' scores, finite: a pass that overflows is computed again in
        the next numeric tier (see the class docstring), which then holds for the remaining rounds."""
        while True:
            # Any non-finite gradient, even of a pruned weight (whose score is 0 whatever it is), means a value
            # overflowed somewhere in the pass: the survivors' gradients went through the same arithmetic.
            finite = self._backward(context, inputs) and gradients_finite(context.params)
            survivors, flat = self._survivor_scores(context.params, alive)
            if finite and all_finite(survivors, flat):
                return survivors, flat
            if not numerics.escalate(k):
                raise nonfinite_error(context, inputs, survivors, k, numerics.description)

    def default_budgets(self) -> Any:
        return ExplicitCounts(dict(self.budgets)) if self.budgets is not None else "global"

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
        (an impossible count) it runs on whole tensors, so that the error is its own.
        """
        n_alive = {n: a.numel() for n, a in alive.items()}
        total = sum(p.param.numel() for p in params.values())
        counts: dict[str, int] | None = None
        if budgets is None:
            density = min(target_density ** (k / self.rounds), sum(n_alive.values()) / total)
            sparsity = 1.0 - density
        else:
            counts = {n: scheduled_count(p.param.numel(), budgets[n], k, self.rounds, n_alive[n]) for n, p in params.items()}
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
    def _backward(context: ScoringContext, inputs: dict[str, torch.Tensor]) -> bool:
        """One SynFlow pass: ``R = sum(output)`` of the all-ones input, backpropagated into the parameters' grads.
        Returns whether the output is finite (the inputs follow the model's current dtype)."""
        for p in context.params.values():
            p.param.grad = None
        output = context.family.synflow_output(context.model, like_model(inputs, context.model))
        total = output.sum()
        total.backward()
        return math.isfinite(float(total.detach())) or bool(torch.isfinite(output.detach()).all())

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
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """``|w * dR/dw|`` at the surviving positions only, per tensor, and all of them in parameter order.

        The per-tensor scores are views of one buffer (the concatenation a global selection reads) when the
        parameters share a dtype and device; otherwise the second value is ``None``. Reading only the survivors is
        exact: a pruned weight is 0 and scores 0 (a pruned weight's gradient may overflow; its score is never read).
        Whether the scores are finite is the caller's check (``numerics.all_finite``).
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
