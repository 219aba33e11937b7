"""SynFlow: iterative synaptic flow pruning, data-free (Tanaka et al. 2020, arXiv 2006.05467)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..allocation.base import ExplicitCounts
from ..gradients import take_batches
from ..heap import release_free_memory
from ..masks import num_to_keep, select_masks
from .base import Criterion, ScoringContext, register_criterion
from .numerics import SignalNumerics, check_finite_weights, like_model, nonfinite_error
from .progress import scoring_progress
from .schedule import scheduled_count
from .synflow_rounds import Removed, RoundScores, Survivors

logger = logging.getLogger(__name__)

# Rounds between two returns of the C allocator's free memory to the system (state.release_free_memory).
_RELEASE_EVERY = 10

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
    form), made without a mask or a list of the survivors: a pruned weight is held at ``-0.0`` (the same forward and
    backward pass as ``+0.0``), so its score ``|g| * w`` is ``-0.0`` and a survivor's ``>= +0.0``, and the weights a
    round removes are read off the scores' bit patterns (:mod:`autosparse_hf.masks.removal`; ties in parameter order,
    then position, as ``select_masks`` breaks them). On the CPU the scores are computed chunk by chunk as the
    gradients are read, and never stored; elsewhere they are computed in place in the gradients. A round keeps only the removed weights' positions (two
    bytes each) and scores; the float64 scores below are written once, at the end. They are the same, bit for bit,
    as those of calling ``select_masks`` on whole tensors every round (``tests/masks/test_selection_fast.py``).
    SynFlow puts the parameters back itself (working copies of the prunable weights, the sign bits of the others),
    so ``compute_scores`` does not copy the model for it.

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
    # SynFlow writes |w| (and zeroes what it prunes) into working copies of the prunable weights and makes the other
    # parameters absolute in place, and puts back every parameter exactly itself (see _absolute_weights): scoring
    # need not copy the model.
    writes_weights = False
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
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.param.requires_grad_(True)
        pruned = {n: ~context.existing[n].bool() for n in params} if context.existing is not None else None
        check_finite_weights(params)
        budgets = self.budgets if self.budgets is not None else context.budgets
        if budgets is not None:
            missing = sorted(set(params) - set(budgets))
            if missing:
                raise ValueError(f"budgets lack prunable tensors {missing}")
        numerics = SignalNumerics(model)
        with _absolute_weights(model, params):
            survivors = Survivors(params, pruned, self.rounds)
            del pruned
            bar = scoring_progress(self.rounds, "SynFlow rounds", self.progress, unit="round")
            try:
                for k in range(1, self.rounds + 1):
                    scores, removed = self._finite_round(context, inputs, numerics, k, survivors, budgets)
                    # The largest score of the round's survivors (a pruned weight scores -0.0).
                    peak = scores.peak or 1.0
                    survivors.remove(k, removed, peak)
                    if k == self.rounds:
                        survivors.finish(scores, peak)
                    del scores, removed
                    if k % _RELEASE_EVERY == 0:
                        # Freed transients of the rounds, returned: glibc keeps freed mid-heap blocks resident, which
                        # grows the process by about half the model's size over 100 GPT-2 rounds. Not every round:
                        # the pages returned are faulted in again by the next round's gradients.
                        release_free_memory()
                    bar.update(1)
            finally:
                bar.close()
                numerics.close()
                for p in params.values():
                    p.param.grad = None
        # The weights are the model's own again (and the gradients gone, their memory returned) before the float64
        # scores are written.
        release_free_memory()
        result = survivors.result()
        logger.info(
            "synflow: %d rounds over %d weights in %.1f s (in %s)", self.rounds, sum(r.numel() for r in result.values()),
            time.perf_counter() - started, numerics.description,
        )
        return result

    def _finite_round(
        self,
        context: ScoringContext,
        inputs: dict[str, torch.Tensor],
        numerics: SignalNumerics,
        k: int,
        survivors: Survivors,
        budgets: Any,
    ) -> tuple[RoundScores, dict[str, Removed]]:
        """Round ``k``'s backward pass, its scores and the weights it removes, finite: a pass that overflows is
        computed again in the next numeric tier (see the class docstring), which then holds for the remaining
        rounds."""
        while True:
            finite = self._backward(context, inputs)
            scores = RoundScores(context.params)
            # Any non-finite gradient, even of a pruned weight, means a value overflowed somewhere in the pass (the
            # survivors' gradients went through the same arithmetic): it makes that weight's score NaN (-0.0 * inf),
            # and the scores' maxima show it.
            if finite:
                removed = self._select_round(context.params, scores, survivors.alive, budgets, k, 1.0 - context.sparsity)
                if removed is not None:
                    return scores, removed
            if not numerics.escalate(k):
                raise nonfinite_error(context, inputs, scores.dense(), k, numerics.description)

    def default_budgets(self) -> Any:
        return ExplicitCounts(dict(self.budgets)) if self.budgets is not None else "global"

    def _select_round(
        self,
        params: dict[str, Any],
        scores: RoundScores,
        alive: dict[str, int],
        budgets: Any,
        k: int,
        target_density: float,
    ) -> dict[str, Removed] | None:
        """The flat positions (ascending) of the survivors round ``k`` removes and their scores, per tensor;
        ``None`` when a score is not finite.

        The same selection as ``select_masks(scores, sparsity, existing=mask)`` (global) or with
        ``scope="counts"`` (inside budgets). Whenever ``select_masks`` would refuse the round (an impossible count),
        it runs on whole tensors, so that an error is its own.
        """
        total = sum(p.param.numel() for p in params.values())
        n_alive = sum(alive.values())
        counts: dict[str, int] | None = None
        if budgets is None:
            density = min(target_density ** (k / self.rounds), n_alive / total)
            sparsity = 1.0 - density
        else:
            counts = {n: scheduled_count(p.param.numel(), budgets[n], k, self.rounds, alive[n]) for n, p in params.items()}
            sparsity = 1.0 - sum(counts.values()) / total
        if 0.0 <= sparsity < 1.0:
            keep = num_to_keep(total, sparsity)
            if counts is None and keep <= n_alive:
                return scores.lowest(alive, n_alive - keep)
            if counts is not None and keep == sum(counts.values()) and all(0 <= counts[n] <= alive[n] for n in params):
                return scores.lowest(alive, {n: alive[n] - counts[n] for n in params})
        if not scores.finite:
            return None
        return self._select_round_on_tensors(params, scores.dense(), sparsity, counts)

    @staticmethod
    def _select_round_on_tensors(
        params: dict[str, Any], scores: dict[str, torch.Tensor], sparsity: float, counts: dict[str, int] | None
    ) -> dict[str, Removed]:
        """The round through ``select_masks`` on whole tensors (what raises its errors for rounds it refuses)."""
        shaped = {n: s.reshape(params[n].param.shape) for n, s in scores.items()}
        existing = {n: ~torch.signbit(s) for n, s in shaped.items()}  # survivors score >= +0.0, pruned weights -0.0
        if counts is None:
            new = select_masks(shaped, sparsity, existing=existing)
        else:
            new = select_masks(shaped, sparsity, scope="counts", layer_counts=counts, existing=existing)
        removed = {}
        for n, flat in scores.items():
            positions = np.flatnonzero((existing[n] & ~new[n]).reshape(-1).cpu().numpy())
            removed[n] = (positions, flat[torch.from_numpy(positions).to(flat.device)].cpu().numpy())
        return removed

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


@contextmanager
def _absolute_weights(model: nn.Module, params: dict[str, Any]) -> Iterator[None]:
    """Every parameter of ``model`` as its absolute value, each put back exactly on exit, without a copy of the model.

    A prunable weight gets an absolute copy as its data (SynFlow also holds the weights it prunes at ``-0.0`` there),
    and its own tensor back on exit; any other parameter is made absolute in place and gets its sign bits back (kept
    packed, one bit per value, on the CPU; ``-0.0`` and NaN payloads included).
    """
    prunable = {id(p.param) for p in params.values()}
    swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
    signs: list[tuple[nn.Parameter, np.ndarray | torch.Tensor]] = []
    try:
        with torch.no_grad():
            for p in model.parameters():
                if id(p) in prunable:
                    swapped.append((p, p.data))
                    p.data = p.data.abs()
                elif p.is_floating_point():
                    negative = torch.signbit(p.data)
                    if bool(negative.any()):
                        packed = p.device.type == "cpu" and p.data.is_contiguous()
                        signs.append((p, np.packbits(negative.numpy().reshape(-1)) if packed else negative))
                        p.data.abs_()
                        del negative
        yield
    finally:
        with torch.no_grad():
            for p, data in swapped:
                p.data = data
            for p, negative in signs:
                _set_sign_bits(p.data, negative)


def _set_sign_bits(values: torch.Tensor, negative: np.ndarray | torch.Tensor) -> None:
    """Set the sign bit of ``values`` (non-negative) where ``negative`` (booleans, or bits packed by numpy), in place.
    Exact for every value (a bitwise or on float32 and float64, a negation otherwise); in slices, so that no
    temporary is as large as the tensor."""
    if isinstance(negative, torch.Tensor):  # booleans, same shape
        values.copy_(torch.where(negative, -values, values))
        return
    bits = {torch.float32: (torch.int32, -(2**31)), torch.float64: (torch.int64, -(2**63))}.get(values.dtype)
    flat = values.view(-1)
    step = 1 << 20  # a multiple of 8: slices start on whole bytes of the packed bits
    for start in range(0, flat.numel(), step):
        part = flat[start : start + step]
        flags = torch.from_numpy(np.unpackbits(negative[start // 8 :], count=part.numel()).view(np.bool_))
        if bits is None:
            part.copy_(torch.where(flags, -part, part))
        else:
            part.view(bits[0]).bitwise_or_(flags.to(bits[0]) * bits[1])
