"""NTK-SAP: iterative, data-free pruning that keeps the NTK spectrum (Wang, Li & Sun, ICLR 2023, arXiv 2304.02840)."""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from ..allocation.base import ExplicitCounts
from ..families import PrunableParameter
from ..gradients import output_with, take_batches
from ..heap import release_free_memory
from ..masks import num_to_keep
from ..masks.topk import top_count_across
from ..state import batch_norm_layers
from .base import Criterion, ScoringContext, register_criterion
from .buffers import record_step, step_dtype
from .ntksap_passes import Call, DrawSettings, add_draw
from .ntksap_record import encode_scores, survivor_peak
from .ntksap_sampling import is_integer, resample_stds
from .progress import scoring_progress
from .schedule import scheduled_count

logger = logging.getLogger(__name__)


@register_criterion
@dataclass
class NTKSAPCriterion(Criterion):
    """Neural Tangent Kernel Spectrum-Aware Pruning, iterative with an exponential schedule, data-free.

    The trace of the fixed-weight NTK, ``||J_theta f(X)||_F^2``, is estimated by finite differences,
    ``E_dtheta ||f(X; theta) - f(X; theta + dtheta)||^2`` with ``dtheta ~ N(0, epsilon^2 I)``. Written with a mask
    ``m`` on the prunable weights, the saliency of a weight is how much that estimate changes when it is removed::

        S(m) = sum_samples || f(X; theta * m) - f(X; (theta + dtheta) * m) ||^2,   score = | dS / dm |  at m = mask

    summed over ``num_samples`` draws of the random input ``X`` (``batch_size`` standard normal examples: the
    input is data-free; a dataloader, if given, only fixes the example shape, as for SynFlow), of ``dtheta`` and
    (``resample_weights``) of the weights ``theta``; the sign is dropped after summing, as in the official code.
    Only the prunable weights are masked, perturbed and re-drawn; biases, normalization and embedding parameters keep
    their values. Over ``rounds`` rounds the density goes ``d^(k / rounds)``, k = 1..rounds, towards the target
    density ``d`` (``1 - ScoringContext.sparsity``), re-scoring the surviving weights each round.

    Multi-sampling (``resample_weights=True``, the paper's "weight-agnostic" estimate): each draw uses fresh weights,
    every prunable tensor drawn from ``N(0, sigma^2)`` with ``sigma`` the root mean square of the tensor's own values
    at scoring time (over the weights ``existing`` keeps; ``1 / sqrt(fan_in)`` should they all be zero, which
    ``compute_scores``'s revival of all-zero tensors leaves only for tensors zeroed but not masked). The
    official code calls the model's ``_initialize_weights`` instead (Kaiming normal), which has no counterpart across
    model families (timm, transformers and plain torch initialize differently and through the global RNG); a
    zero-mean normal with each tensor's own variance keeps what the analytic NTK that multi-sampling estimates
    depends on (the per-layer weight variance of i.i.d. zero-mean initializations) and needs nothing model-specific.
    ``resample_weights=False`` keeps the model's own weights in every draw (the fixed-weight NTK; ``X`` and
    ``dtheta`` are still re-drawn). Either way the model's weights are never modified: the masked and perturbed
    weights are substituted with ``torch.func.functional_call``.

    Batch norm: the passes run in eval mode (dropout off), with running statistics. With ``calibrate_norm`` (the
    official code's behaviour) those statistics are first set, for every draw, to the statistics of the draw's random
    batch through the unperturbed masked network (one no-grad forward pass with only the batch-norm layers in train
    mode and momentum 1); the perturbed network uses the same statistics. Without it the stored running statistics are
    used as they are (at initialization, mean 0 and variance 1: no normalization). compute_scores restores the
    statistics afterwards.

    Random draws come from a ``torch.Generator`` on the model's device seeded with ``seed``, per round and per sample
    in this order: the input ``X`` (one ``randn`` per floating input tensor, shape ``(batch_size, *example_shape)``),
    then, with ``resample_weights``, one standard normal per prunable tensor in parameter order (times ``sigma``),
    then one standard normal per prunable tensor in parameter order (times ``epsilon``, the perturbation).

    The returned scores (float64) encode the whole procedure so that a global top-k at the target sparsity
    reproduces the iterative mask exactly, as SynFlow's do: a weight removed in round ``r`` scores
    ``r - 1 + 0.5 * s_r / max(s_r)``, a survivor scores ``rounds + s / max(s)`` (its last saliency), a weight already
    pruned (``ScoringContext.existing`` False) scores ``-1``. Each round keeps the ``count`` best survivors
    (:func:`autosparse_hf.masks.topk.top_count`: ties in parameter order, then position, as ``select_masks`` breaks
    them), ``count = round(N * d^(k / rounds))`` (at least the final count, at most the survivors), and exactly
    ``num_to_keep(N, sparsity)`` in the last round. Inside layer budgets fixed before scoring (``budgets`` or
    ``ScoringContext.budgets``) every tensor follows its own schedule ``round(n * (c / n)^(k / rounds))`` towards its
    count ``c``, as SynFlow does, so a per-tensor top-k of ``c`` reproduces the final round's mask.

    Cost: ``rounds * num_samples`` draws on ``batch_size`` random examples; per micro-batch the two weight sets'
    backward passes run one after the other, each against the other set's outputs computed without a graph (so one
    graph is held at a time): three forward passes and two backward passes when the draw's outputs take no more
    memory than one set of prunable weights (then only one weight set is held: it is perturbed in place and the clean
    weights re-drawn), else four forward passes and two backward passes with both sets held
    (:mod:`autosparse_hf.criteria.ntksap_passes`). Plus one no-grad forward pass to calibrate batch norm, when the
    model has batch norm and ``calibrate_norm``. Memory beyond the model: the record (5 bytes a float32 weight), the
    survivor flags (1 byte), one or two weight sets, the draw's outputs (in the one-set form) and one micro-batch's
    graph.

    Why NTK-SAP and not PHEW (Patil & Dovrolis 2021) as the second data-free, iterative criterion: PHEW builds the
    mask from biased random walks over an explicit graph of units (input neurons / channels to output ones, one layer
    to the next, edges weighted by ``|w|``), which a library has to extract from the model: it does not exist as such
    for grouped or depthwise convolutions, residual sums, attention (a product of two activations) or arbitrary
    modules. NTK-SAP needs no graph: only the model as a differentiable function, evaluated at two weight sets per
    draw and differentiated with autograd (a backward pass per set) with respect to a mask on the prunable weights,
    whatever modules lie between them. (It is not forward-only: getting the mask gradient from forward passes alone
    would take one per weight.)

    Paper defaults, from the official code (github.com/YiteWang/NTK-SAP: ``--ntksap_epsilon 0.01``, its example
    script ``--prune-epochs 20 --ntksap_R 5``, a pruning set of ten examples per class, e.g. 100 for CIFAR-10, in
    one batch of at most 256): ``epsilon=0.01``, ``rounds=20`` (the CIFAR-10 setting; CIFAR-100 and Tiny-ImageNet
    used 100), ``num_samples=5``, ``batch_size=100``.

    Args:
        rounds: Pruning iterations ``T``.
        epsilon: Standard deviation of the weight perturbation ``dtheta`` (absolute, as in the paper).
        num_samples: Draws of ``(X, theta, dtheta)`` per round (the paper's ``R``).
        batch_size: Random examples per draw.
        micro_batch_size: Examples per forward/backward pass (``None``: the whole draw at once). The objective is a
            sum over examples and batch norm is in eval mode (on calibrated or stored statistics) when it is
            evaluated, so splitting a draw gives the same gradient (up to the order of float additions) with the
            graph of one micro-batch at a time: what lets token models, whose output is ``sequence x vocabulary`` per
            example, be scored (GPT-2 small: 128 x 50257 logits per example). The draw's outputs are kept between the
            passes only while they take no more memory than one set of prunable weights (else recomputed).
        resample_weights: Fresh random weights in every draw (multi-sampling), else the model's own.
        calibrate_norm: Batch-norm statistics of each draw's random batch, else the stored running statistics.
        seed: Seed of the generator of all random draws (the scores are deterministic given it, bit for bit with
            several threads only under MKL's reproducible mode, e.g. ``MKL_CBWR=AUTO``: docs/criteria.md).
        budgets: Kept weights per tensor at the target sparsity, fixed with the criterion (then they are its default
            layer budgets); ``None`` to use the allocation's counts, or one global threshold without them.
        progress: ``True`` shows a ``tqdm`` bar over the rounds, ``False`` never; ``None`` (default) as SynFlow's
            (transformers' progress-bar switch, shown once scoring has taken a couple of seconds).

    Example:
        ```python
        >>> masks = prune_at_init(model, "ntksap", 0.9, criterion_options={"rounds": 20, "num_samples": 5})
        ```
    """

    name = "ntksap"
    writes_weights = False
    rounds: int = 20
    epsilon: float = 0.01
    num_samples: int = 5
    batch_size: int = 100
    micro_batch_size: int | None = None
    resample_weights: bool = True
    calibrate_norm: bool = True
    seed: int = 0
    budgets: dict[str, int] | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        for option in ("rounds", "num_samples", "batch_size"):
            value = getattr(self, option)
            if not is_integer(value) or value < 1:
                raise ValueError(f"{option} must be an integer >= 1, got {value!r}")
        if self.micro_batch_size is not None and (not is_integer(self.micro_batch_size) or self.micro_batch_size < 1):
            raise ValueError(f"micro_batch_size must be an integer >= 1 or None, got {self.micro_batch_size!r}")
        if (
            not isinstance(self.epsilon, numbers.Real)
            or isinstance(self.epsilon, bool)
            or not math.isfinite(float(self.epsilon))
            or float(self.epsilon) <= 0.0
        ):
            raise ValueError(f"epsilon must be a finite number > 0, got {self.epsilon!r}")
        for option in ("resample_weights", "calibrate_norm"):
            if not isinstance(getattr(self, option), bool):
                raise ValueError(f"{option} must be True or False, got {getattr(self, option)!r}")
        if not is_integer(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True, False or None, got {self.progress!r}")
        if self.budgets is not None:
            if not isinstance(self.budgets, Mapping) or not all(
                isinstance(n, str) and is_integer(c) and c >= 0 for n, c in self.budgets.items()
            ):
                raise ValueError(
                    f"budgets must map parameter names to kept counts (integers >= 0), got {self.budgets!r}"
                )

    def default_budgets(self) -> Any:
        return ExplicitCounts(dict(self.budgets)) if self.budgets is not None else "global"

    # ------------------------------------------------------------------------------------------------- scoring
    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        model, params, family = context.model, context.params, context.family
        started = time.perf_counter()
        batch = take_batches(context.dataloader, 1, "ntksap")[0] if context.dataloader is not None else None
        template = family.synflow_inputs(model, batch)  # only the shape and dtype of one example are read
        budgets = self._resolve_budgets(params, context.budgets)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        # Which weights are still in: one boolean per weight (the survivors of each round, in position order).
        alive = {
            n: (
                context.existing[n].bool().to(p.param.device)
                if context.existing is not None
                else torch.ones_like(p.param, dtype=torch.bool)
            ).reshape(-1)
            for n, p in params.items()
        }
        sigma = resample_stds(params, alive) if self.resample_weights else {}
        # The record the float64 scores are built from at the end: a removed weight's saliency then (in the dtype it
        # is computed in, float32 for float32 weights) and its round (0: never removed); 5 bytes a float32 weight
        # instead of the 8 of float64 scores held through every round. The saliency record is also each round's
        # accumulator: the survivors' entries (0 when the round starts) take the round's mask gradients, the removed
        # ones keep theirs, so no second parameter-sized set of tensors is held for the round's sums.
        removed_saliency = {
            n: torch.zeros(p.param.numel(), dtype=p.param.dtype, device=p.param.device) for n, p in params.items()
        }
        removed_round = {n: torch.zeros(a.numel(), dtype=step_dtype(self.rounds), device=a.device) for n, a in alive.items()}
        peaks = [1.0]  # peaks[k]: the largest survivor saliency of round k
        device = next(iter(params.values())).param.device
        generator = torch.Generator(device=device).manual_seed(int(self.seed))
        call = partial(output_with, model, family)  # call(inputs, weights): the output at those weights
        norms = batch_norm_layers(model) if self.calibrate_norm else []
        momenta = [m.momentum for m in norms]
        total = sum(p.param.numel() for p in params.values())
        target_density = 1.0 - context.sparsity
        bar = scoring_progress(self.rounds, "NTK-SAP rounds", self.progress, unit="round")
        try:
            for m in norms:
                m.momentum = 1.0
            for k in range(1, self.rounds + 1):
                peak = self._saliency(call, params, alive, sigma, template, generator, norms, k, removed_saliency)
                # Selection reads the survivors' saliencies as computed (float32 for float32 weights: the same order
                # as their exact float64 values) in place (``alive`` marks them); ``encode_scores`` is float64.
                keeps = self._select_round(
                    params, removed_saliency, alive, budgets, k, target_density, total, context.sparsity
                )
                peaks.append(peak or 1.0)
                for n in params:
                    kept = keeps.pop(n)  # inside alive
                    # The removed weights' saliencies are where they were summed; the kept ones' are reset when the
                    # next round starts (after the last round they are the survivors' last saliencies).
                    record_step(removed_round[n], alive[n] ^ kept, k)
                    alive[n] = kept
                bar.update(1)
            result = encode_scores(
                params, removed_saliency, removed_round, dict(removed_saliency), alive, peaks, self.rounds
            )
        finally:
            bar.close()
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            model.eval()
        logger.info(
            "ntksap: %d rounds x %d samples x %d random examples over %d weights in %.1f s",
            self.rounds,
            self.num_samples,
            self.batch_size,
            total,
            time.perf_counter() - started,
        )
        return result

    def _resolve_budgets(
        self, params: dict[str, PrunableParameter], context_budgets: Mapping[str, int] | None
    ) -> dict[str, int] | None:
        budgets = self.budgets if self.budgets is not None else context_budgets
        if budgets is None:
            return None
        missing = sorted(set(params) - set(budgets))
        if missing:
            raise ValueError(f"budgets lack prunable tensors {missing}")
        for n, p in params.items():
            count = budgets[n]
            if not is_integer(count) or not 0 <= count <= p.param.numel():
                raise ValueError(f"budgets[{n!r}] must be an integer in [0, {p.param.numel()}], got {count!r}")
        return {n: int(budgets[n]) for n in params}

    def _saliency(
        self,
        call: Call,
        params: dict[str, PrunableParameter],
        alive: dict[str, torch.Tensor],
        sigma: dict[str, float],
        template: Mapping[str, Any],
        generator: torch.Generator,
        norms: list[nn.Module],
        k: int,
        record: dict[str, torch.Tensor],
    ) -> float:
        """``|sum over samples of dS/dm|`` for round ``k`` (the signed gradients are summed first), written into the
        survivors' entries of ``record`` (flat; the others are kept as they are), and the largest survivor's (0.0
        when there is none).

        ``dS/dm`` at a surviving weight (``m = 1``) is ``theta * dS/dA + (theta + dtheta) * dS/dB`` with ``A = theta *
        m`` and ``B = (theta + dtheta) * m`` the two weight sets the passes use, and ``theta = A``, ``theta + dtheta
        = B`` there: so the gradient is taken with respect to ``A`` and ``B``, one set's backward pass at a time
        (:mod:`autosparse_hf.criteria.ntksap_passes`), and multiplied by it (the products the mask's own backward
        would form). A pruned weight's entry keeps the saliency recorded when it was removed, or 0.
        """
        # The survivors' entries start the round at 0 (the previous round's kept saliencies are dropped).
        for n, a in alive.items():
            torch.where(a, record[n].new_zeros(()), record[n], out=record[n])
        total = {n: record[n].view(p.param.shape) for n, p in params.items()}
        survivors = {n: alive[n].view(p.param.shape) for n, p in params.items()}
        settings = DrawSettings(
            epsilon=float(self.epsilon),
            batch_size=self.batch_size,
            micro_batch_size=self.micro_batch_size or self.batch_size,
            resample_weights=self.resample_weights,
            round=k,
        )
        for _ in range(self.num_samples):
            add_draw(call, params, survivors, sigma, template, generator, norms, total, settings)
            release_free_memory()  # the draw's passes, before the next draw's weight sets
        for g in record.values():
            g.abs_()  # the recorded saliencies are magnitudes already
        return survivor_peak(record, alive, k)

    def _select_round(
        self,
        params: dict[str, PrunableParameter],
        saliency: dict[str, torch.Tensor],
        alive: dict[str, torch.Tensor],
        budgets: dict[str, int] | None,
        k: int,
        target_density: float,
        total: int,
        sparsity: float,
    ) -> dict[str, torch.Tensor]:
        """Which survivors round ``k`` keeps: one boolean per weight (flat), inside ``alive``. The ``count`` largest
        survivors of all tensors (ties: parameter order, then position), or each tensor's scheduled count of its own."""
        n_alive = {n: int(torch.count_nonzero(a)) for n, a in alive.items()}
        flat = [saliency[n].reshape(-1) for n in params]
        candidates = [alive[n] for n in params]
        if budgets is None:
            final = num_to_keep(total, sparsity)
            count = final if k == self.rounds else round(total * target_density ** (k / self.rounds))
            count = min(max(count, final), sum(n_alive.values()))
            return dict(zip(params, top_count_across(flat, candidates, count), strict=True))
        keeps = {}
        for n, values, chosen in zip(params, flat, candidates, strict=True):
            count = scheduled_count(params[n].param.numel(), budgets[n], k, self.rounds, n_alive[n])
            keeps[n] = top_count_across([values], [chosen], count)[0]
        return keeps

