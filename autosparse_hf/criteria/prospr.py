"""ProsPr: prospect pruning with meta-gradients through early training (Alizadeh et al. 2022, arXiv 2202.08132)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..families import ModelFamily
from ..gradients import loss_with, take_batches
from ..heap import release_free_memory, releasing_during_backward
from ..state import batch_norm_layers
from .base import Criterion, ScoringContext, register_criterion
from .buffers import flat_empty_like
from .grasp import twice_differentiable_activations
from .progress import scoring_progress

logger = logging.getLogger(__name__)


@register_criterion
@dataclass
class ProsPrCriterion(Criterion):
    """ProsPr's meta-gradient saliency ``s = |dL(w_T; D_T) / dc|`` at ``c = 1``.

    [Prospect Pruning (ProsPr)](https://arxiv.org/abs/2202.08132) (Alizadeh et al., ICLR 2022) scores a weight by how
    much masking it changes the loss *after* a few steps of training, not at initialization only. A multiplicative
    mask ``c`` (all ones) multiplies the initial weights, ``inner_steps`` = T steps of plain SGD train the masked
    network, and the score is the magnitude of the gradient of the loss after those steps with respect to the mask,
    differentiated through the whole optimization trajectory (a meta-gradient):

    ```
    w_0     = w_init * c                                   (c = 1, prunable weights only)
    w_{t+1} = w_t - inner_lr * dL(w_t; D_t) / dw_t         t = 0 .. T-1
    s       = | dL(w_T; D_T) / dc |
    ```

    With ``T = 0`` this would be SNIP's ``|w * dL/dw|`` (``dL/dc = w * dL/dw`` at ``c = 1``); the inner steps add
    the higher-order effect of the mask on the training trajectory. Higher score = keep; the mask is selected in one
    shot from these scores (the paper's single-shot pruning).

    What follows the paper and its official code (github.com/mil-ad/prospr):

    - The score is ``|dL/dc|`` itself (no further factor); the mask multiplies the *initial* weights only, the inner
      steps update the masked weights ``w_t`` (gradients with respect to ``w_t``, as in MAML), and pruning is
      single-shot.
    - Every floating-point parameter takes the inner SGD steps (biases, normalization scales, embeddings included),
      as training would, whatever its ``requires_grad`` (criteria score frozen weights too); only the prunable
      weights carry a mask. Inner steps are plain SGD (no momentum, no weight decay): the official code's defaults.
    - ``inner_steps=3`` and ``inner_lr=0.1`` are the official code's defaults (``--inner-steps``, ``--inner-lr``).
    - ``first_order=True`` is the paper's first-order approximation: the inner gradients are treated as constants, so
      ``dw_T/dw_0`` is the identity and ``s = |w_init * dL(w_T; D_T)/dw_T|``; no second-order graph is kept.

    Deviations, for a library that scores any model the same way:

    - Dropout is off (eval mode, like every criterion here); batch norm normalizes with each batch's own statistics
      (``batch_statistics=True``, the default), as in the official code, which runs in train mode. The running
      statistics the passes update are put back by ``compute_scores``. ``batch_statistics=False`` uses the running
      statistics instead, which at initialization (mean 0, variance 1) normalize nothing: a deep residual network's
      activations then grow with depth and three SGD steps at ``inner_lr=0.1`` diverge (timm's ResNet-50 reaches
      NaN; ``tests/criteria/test_prospr.py``).
    - Batches: the T inner steps take the dataloader's first T batches, one each, and the meta-loss is averaged
      over the ``num_batches`` batches after them (so ``inner_steps + num_batches`` batches are read; with the default
      ``num_batches=1``, batches 1..T train and batch T+1 scores). When the dataloader holds fewer, they are
      cycled; a one-batch dataloader uses the same batch for every step and for the meta-loss, which is the official
      code's default (``--new-data-in-inner`` off). ``batches_used`` reports the number of distinct batches read.
    - The model is never copied nor modified: the masked and updated weights are functional tensors fed through
      ``torch.func.functional_call``; buffers are the model's own.

    Cost: second order (the default) differentiates through the trajectory in reverse, one inner step at a time,
    instead of keeping the graphs of all inner steps at once: ``v = dL(w_T)/dw_T``, then for ``t = T-1 .. 0``
    ``v <- v - inner_lr * H_t v`` (``H_t`` the Hessian of step t's loss at ``w_t``, a Hessian-vector product by double
    backward), and ``dL/dc = w_init * v``: the same chain rule as backpropagating through the unrolled graph, with
    one step's graph in memory. ``w_t`` is recomputed from ``w_0`` by ``t`` plain SGD steps when its level is
    reached (nothing is stored), so the passes are ``T (T + 1) / 2 + T`` first-order steps, ``num_batches`` meta
    passes and ``T`` double-backward passes; the memory is one step's forward and first-order backward graphs plus
    three parameter-sized vectors at the peak (``v``, the recomputed ``w_t`` and the first-order gradients ``g_t``
    until their product with ``v`` is formed), against ``T + 1`` graphs and parameter copies when the whole
    trajectory is unrolled; the C heap's freed pages are handed back as every backward runs
    (``heap.releasing_during_backward``), so the process's peak is that of these tensors (GPT-2 small: BENCHMARKS.md,
    "Cost of every criterion"). The result agrees with the unrolled computation to rounding (summation order).
    Attention runs on its math kernel, and hard-sigmoid / hard-swish are swapped for equal twice-differentiable
    forms (as for GraSP), since the fused kernels have no double backward. ``first_order=True`` costs ``T`` training
    steps and the meta passes, with about two parameter-sized vectors in memory (GPT-2 small: a peak of 2.7x the
    parameters' bytes beyond the model against 5.2x for the second order; BENCHMARKS.md).

    Args:
        inner_steps: SGD steps T unrolled before the meta-loss (>= 1; 3, the official code's default).
        inner_lr: Learning rate of the inner SGD steps (> 0; 0.1, the official code's default).
        first_order: Treat the inner gradients as constants (the paper's first-order approximation).
        batch_statistics: Batch norm on each batch's statistics (train mode for the batch-norm layers only, as the
            official code), else on the running statistics (eval mode).
        progress: ``True`` shows a ``tqdm`` bar over the passes, ``False`` never; ``None`` (default) follows the
            transformers progress-bar switch and shows the bar only once scoring has taken a couple of seconds (see
            ``autosparse_hf.criteria.progress``).

    Example:
        ```python
        >>> masks = autosparse_hf.prune_at_init(model, "prospr", sparsity=0.9, dataloader=loader)
        >>> scores = autosparse_hf.compute_scores(model, "prospr", dataloader=loader, inner_steps=3, first_order=True)
        ```
    """

    name = "prospr"
    writes_weights = False
    needs_data = True
    inner_steps: int = 3
    inner_lr: float = 0.1
    first_order: bool = False
    batch_statistics: bool = True
    progress: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int) or self.inner_steps < 1:
            raise ValueError(f"inner_steps must be an integer >= 1, got {self.inner_steps!r}")
        if (
            isinstance(self.inner_lr, bool)
            or not isinstance(self.inner_lr, (int, float))
            or not math.isfinite(self.inner_lr)
            or self.inner_lr <= 0
        ):
            raise ValueError(f"inner_lr must be a finite number > 0, got {self.inner_lr!r}")
        for option in ("first_order", "batch_statistics"):
            if not isinstance(getattr(self, option), bool):
                raise ValueError(f"{option} must be True or False, got {getattr(self, option)!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True, False or None, got {self.progress!r}")

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        model, family = context.model, context.family
        num_meta = context.num_batches
        if num_meta < 1:
            raise ValueError(f"num_batches must be >= 1 (the meta-loss batches), got {num_meta}")
        drawn = take_batches(context.dataloader, self.inner_steps + num_meta, "prospr")
        self._distinct_batches = len(drawn)
        batches = [drawn[i % len(drawn)] for i in range(self.inner_steps + num_meta)]
        model.eval()
        if self.batch_statistics:
            for norm in batch_norm_layers(model):
                norm.train()  # batch statistics; the running ones it updates are restored by compute_scores
        prunable = {n: p.param for n, p in context.params.items()}
        # w_0 = w_init * c at c = 1, i.e. the model's own tensors (never written): every floating parameter trains.
        start = {n: p.detach() for n, p in model.named_parameters() if p.is_floating_point()}
        missing = sorted(set(prunable) - set(start))
        if missing:
            raise ValueError(f"prospr: prunable parameters {missing} are not parameters of {type(model).__name__}")
        steps = self.inner_steps
        passes = steps + num_meta + (steps * (steps + 1) // 2 + steps if not self.first_order else 0)
        bar = scoring_progress(passes, "ProsPr passes", self.progress, unit="pass")
        try:
            with ExitStack() as stack, _clear_batch_norm_errors():
                if not self.first_order:
                    # Double backward: the fused attention kernels and torch's hard-sigmoid/hard-swish backward
                    # have none (see GraSP). Every pass runs so, to follow one trajectory.
                    stack.enter_context(sdpa_kernel(SDPBackend.MATH))
                    stack.enter_context(twice_differentiable_activations())
                run = _Trajectory(model, family, batches, float(self.inner_lr), start, bar)
                final = run.train(steps)
                if self.first_order:
                    # The inner gradients are constants: dw_T/dw_0 is the identity, dL/dc = w_init * dL/dw_T.
                    meta = run.meta_gradient(final, batches[steps:], num_meta, list(prunable), scale=prunable)
                else:
                    v = run.meta_gradient(final, batches[steps:], num_meta, list(start))
                    del final
                    for t in reversed(range(steps)):
                        v = run.backpropagate(v, t)
                    meta = {n: v.pop(n).mul_(w.detach()) for n, w in prunable.items()}  # d(w_init * c)/dc
                    del v
        finally:
            bar.close()
        logger.info(
            "prospr: %d inner steps (%s order) and %d meta batch(es) in %.1f s",
            self.inner_steps,
            "first" if self.first_order else "second",
            num_meta,
            time.perf_counter() - started,
        )
        return {n: g.abs_() for n, g in meta.items()}

    def batches_used(self, num_batches: int) -> int:
        """Distinct batches read: ``inner_steps + num_batches``, fewer when the last dataloader scored held fewer."""
        wanted = self.inner_steps + num_batches
        distinct = getattr(self, "_distinct_batches", None)
        return wanted if distinct is None else min(wanted, distinct)


class _Trajectory:
    """The inner SGD trajectory ``w_{t+1} = w_t - lr * dL(w_t; D_t)/dw_t`` from ``w_0`` (the model's tensors), and
    the chain rule through it, one step at a time. Weights are substituted with ``functional_call`` (``loss_with``),
    so the model is never written."""

    def __init__(
        self,
        model: nn.Module,
        family: ModelFamily,
        batches: list[Any],
        lr: float,
        start: dict[str, torch.Tensor],
        bar: Any,
    ) -> None:
        self.model, self.family, self.batches, self.lr, self.start, self.bar = model, family, batches, lr, start, bar

    def loss(self, batch: Any, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return loss_with(self.model, self.family, batch, tensors)

    @staticmethod
    def grad(loss: torch.Tensor, inputs: list[torch.Tensor], create_graph: bool = False) -> tuple[Any, ...]:
        """``d loss / d inputs`` (``None`` for an unused input), the C heap's free memory released as backward runs."""
        with releasing_during_backward(loss):
            return torch.autograd.grad(loss, inputs, create_graph=create_graph, allow_unused=True)

    def train(self, steps: int) -> dict[str, torch.Tensor]:
        """``w_steps`` by first-order SGD steps, no graph kept (``w_0``'s tensors are the model's and stay as they
        are; later ones are ours and updated in place)."""
        weights = dict(self.start)
        # w_0 is the model's own tensors; from w_1 on the weights live in one flat buffer (one allocation, handed
        # back whole) and are updated in place.
        storage: dict[str, torch.Tensor] | None = None
        ours: set[str] = set()
        for t in range(steps):
            leaves = {n: w.detach().requires_grad_(True) for n, w in weights.items()}
            grads = list(self.grad(self.loss(self.batches[t], leaves), list(leaves.values())))
            del leaves
            with torch.no_grad():
                if storage is None:
                    storage = flat_empty_like(weights)
                for i, (n, w) in enumerate(list(weights.items())):
                    g, grads[i] = grads[i], None
                    if g is not None:  # w - lr * g
                        g.mul_(self.lr)
                        weights[n] = w.sub_(g) if n in ours else torch.sub(w, g, out=storage[n])
                        ours.add(n)
                    del g
            self.bar.update(1)
        return weights

    def meta_gradient(
        self,
        weights: dict[str, torch.Tensor],
        batches: list[Any],
        count: int,
        names: list[str],
        scale: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``sum_k d(L(w; D_k) / count)/dw`` for the ``names`` tensors (zeros where unused), each batch's gradient
        multiplied by ``scale`` first when given (``w_init``: the first-order ``dL/dc``, in the unrolled order)."""
        wanted = set(names)
        leaves = {n: w.detach().requires_grad_(n in wanted) for n, w in weights.items()}
        # The second-order adjoint lives in one flat buffer, like the weights (the first-order scores do not).
        flat = flat_empty_like({n: leaves[n] for n in names}) if scale is None else None
        total: dict[str, torch.Tensor] = {}
        for batch in batches:
            grads = self.grad(self.loss(batch, leaves) / count, [leaves[n] for n in names])
            for n, g in zip(names, grads, strict=True):
                g = torch.zeros_like(leaves[n]) if g is None else g
                if scale is not None:
                    g = g.mul_(scale[n].detach())
                if n in total:
                    total[n].add_(g)
                else:
                    total[n] = flat[n].copy_(g) if flat is not None else g
            del grads
            self.bar.update(1)
        return total

    def backpropagate(self, v: dict[str, torch.Tensor], t: int) -> dict[str, torch.Tensor]:
        """``dL/dw_t`` from ``v = dL/dw_{t+1}``: ``v - lr * H_t v`` through ``w_{t+1} = w_t - lr * g_t(w_t)``."""
        weights = self.train(t)  # w_t, recomputed
        release_free_memory()  # what the first-order passes freed, before the double backward grows the heap
        leaves = {n: w.detach().requires_grad_(True) for n, w in weights.items()}
        del weights
        names = list(leaves)
        first = list(self.grad(self.loss(self.batches[t], leaves), [leaves[n] for n in names], create_graph=True))
        # What the unrolled graph sends into g_t: (-v) * lr (the subtraction's, then the product's, backward). The
        # products save v itself and -lr scales their sum: the double backward then forms -lr * v_n (the same
        # product, bit for bit) when it reaches product n, with no parameter-sized copy of -lr v alive before it.
        dot = torch.zeros((), dtype=next(iter(v.values())).dtype, device=next(iter(v.values())).device)
        for i, n in enumerate(names):
            if first[i] is not None:
                dot = dot + (first[i] * v[n]).sum()
            first[i] = None  # the double backward reads only what the products saved
        del first
        dot = dot * -self.lr
        # The gradient of w_t starts as v (the subtraction's direct path) and the H_t-terms accumulate into it, in
        # place: v's storage becomes dL/dw_t. The products read v before that: autograd runs the nodes of this sum
        # (created last, so first in its order) before any node of the first-order graph, and only through those do
        # gradients reach the weights (were it otherwise, autograd's check of saved tensors would raise, not err).
        for n in names:
            leaves[n].grad = v.pop(n)
        if dot.requires_grad:
            with releasing_during_backward(dot):
                dot.backward(inputs=[leaves[n] for n in names])
        del dot
        out = {n: leaves[n].grad for n in names}
        for n in names:
            leaves[n].grad = None
        self.bar.update(1)
        return out


@contextmanager
def _clear_batch_norm_errors() -> Iterator[None]:
    """Name the cause and the way out when batch norm on batch statistics sees one value per channel (torch's own
    message names neither ProsPr nor the option)."""
    try:
        yield
    except ValueError as error:
        if "Expected more than 1 value per channel" not in str(error):
            raise
        raise ValueError(
            "prospr: batch norm on batch statistics (batch_statistics=True, the official code's behaviour) needs more "
            "than one value per channel, and a batch-norm layer got one (a batch of 1 reaching a 1x1 feature map); "
            "use larger batches, or criterion_options={'batch_statistics': False} for the running statistics"
        ) from error

