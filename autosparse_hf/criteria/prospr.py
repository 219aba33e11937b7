"""ProsPr: prospect pruning with meta-gradients through early training (Alizadeh et al. 2022, arXiv 2202.08132)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..families import ModelFamily
from ..gradients import take_batches
from .base import Criterion, ScoringContext, register_criterion
from .grasp import twice_differentiable_activations
from .progress import scoring_progress

logger = logging.getLogger(__name__)


class _FamilyLoss(nn.Module):
    """``family.loss(model, batch)`` as the ``forward`` of a module, so that ``torch.func.functional_call`` can run
    it with substituted tensors.

    ``functional_call(module, tensors, args)`` swaps the named tensors into ``module`` and its submodules, calls
    ``module.forward(*args)`` and swaps the originals back (the model's own parameters are never written). The family
    adapters call the model in their own way (``model(**batch)``, ``model(x)`` plus a cross-entropy, ...), so the
    module given to ``functional_call`` is this thin wrapper whose only child is the model: every parameter of the
    model is reachable as ``"model." + name`` and the family's loss runs unchanged on the substituted tensors. Only
    public API is used (no layer replacement, no monkey-patching), so any ``nn.Module`` works: plain torch, timm,
    transformers.
    """

    def __init__(self, model: nn.Module, family: ModelFamily) -> None:
        super().__init__()
        self.model = model
        self.family = family

    def forward(self, batch: Any) -> torch.Tensor:
        return self.family.loss(self.model, batch)


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

    - The model is scored in eval mode like every criterion here (dropout off, batch norm on its running statistics,
      which are not updated); the official code runs the inner steps in train mode (batch statistics).
    - Batches: the T inner steps take the dataloader's first T batches, one each, and the meta-loss is averaged
      over the ``num_batches`` batches after them (so ``inner_steps + num_batches`` batches are read; with the default
      ``num_batches=1``, batches 1..T train and batch T+1 scores). When the dataloader holds fewer, they are
      cycled; a one-batch dataloader uses the same batch for every step and for the meta-loss, which is the official
      code's default (``--new-data-in-inner`` off). ``batches_used`` reports the number of distinct batches read.
    - The model is never copied nor modified: the masked and updated weights are functional tensors fed through
      ``torch.func.functional_call``; buffers are the model's own.

    Cost: ``inner_steps + num_batches`` forward and backward passes. Second order (the default) keeps the graph of
    every inner step and its gradient (about ``inner_steps + 1`` forward graphs, their backward graphs and one copy of
    the parameters per step) and the final backward pass runs through all of them, roughly doubling the time of the
    inner backward passes. Attention runs on its math kernel then, and hard-sigmoid / hard-swish are swapped for
    equal twice-differentiable forms (as for GraSP), since the fused kernels have no double backward.
    ``first_order=True`` costs as much memory as one training step.

    Args:
        inner_steps: SGD steps T unrolled before the meta-loss (>= 1; 3, the official code's default).
        inner_lr: Learning rate of the inner SGD steps (> 0; 0.1, the official code's default).
        first_order: Treat the inner gradients as constants (the paper's first-order approximation).
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
        if not isinstance(self.first_order, bool):
            raise ValueError(f"first_order must be True or False, got {self.first_order!r}")
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
        loss_of = _FamilyLoss(model, family)

        # The mask c (ones) on each prunable weight; w_0 = w_init * c. Every other floating parameter starts as a
        # leaf view of itself (no copy); it depends on c from the first step on, through the gradients.
        masks = {n: torch.ones_like(p.param, requires_grad=True) for n, p in context.params.items()}
        fast: dict[str, torch.Tensor] = {}
        for n, p in model.named_parameters():
            if n in masks:
                fast[n] = p.detach() * masks[n]
            elif p.is_floating_point():
                fast[n] = p.detach().requires_grad_(True)
        missing = sorted(set(masks) - set(fast))
        if missing:
            raise ValueError(f"prospr: prunable parameters {missing} are not parameters of {type(model).__name__}")

        def loss(batch: Any, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(loss_of, {f"model.{n}": t for n, t in tensors.items()}, (batch,))

        second_order = not self.first_order
        lr = float(self.inner_lr)
        meta = {n: torch.zeros_like(m) for n, m in masks.items()}
        bar = scoring_progress(self.inner_steps + num_meta, "ProsPr passes", self.progress, unit="pass")
        try:
            with ExitStack() as stack:
                if second_order:
                    # Double backward: the fused attention kernels and torch's hard-sigmoid/hard-swish backward
                    # have none (see GraSP).
                    stack.enter_context(sdpa_kernel(SDPBackend.MATH))
                    stack.enter_context(twice_differentiable_activations())
                for step in range(self.inner_steps):
                    inner = loss(batches[step], fast)
                    grads = torch.autograd.grad(
                        inner, list(fast.values()), create_graph=second_order, allow_unused=True
                    )
                    fast = {n: t if g is None else t - lr * g for (n, t), g in zip(fast.items(), grads, strict=True)}
                    del inner, grads
                    bar.update(1)
                names = list(masks)
                for k, batch in enumerate(batches[self.inner_steps :]):
                    outer = loss(batch, fast) / num_meta
                    grads = torch.autograd.grad(
                        outer, [masks[n] for n in names], retain_graph=k < num_meta - 1, allow_unused=True
                    )
                    for n, g in zip(names, grads, strict=True):
                        if g is not None:
                            meta[n].add_(g)
                    del outer, grads
                    bar.update(1)
        finally:
            bar.close()
        logger.info(
            "prospr: %d inner steps (%s order) and %d meta batch(es) in %.1f s",
            self.inner_steps,
            "first" if self.first_order else "second",
            num_meta,
            time.perf_counter() - started,
        )
        return {n: g.abs() for n, g in meta.items()}

    def batches_used(self, num_batches: int) -> int:
        """Distinct batches read: ``inner_steps + num_batches``, fewer when the last dataloader scored held fewer."""
        wanted = self.inner_steps + num_batches
        distinct = getattr(self, "_distinct_batches", None)
        return wanted if distinct is None else min(wanted, distinct)
