"""GraSP: gradient signal preservation (Wang et al. 2020, arXiv 2002.07376)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..gradients import average_gradients, require_grad_only
from ..heap import release_free_memory, releasing_during_backward
from .base import Criterion, ScoringContext, register_criterion


def _hardsigmoid(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:  # noqa: A002, ARG001
    return F.relu6(input + 3.0) / 6.0


def _hardswish(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:  # noqa: A002, ARG001
    return input * F.relu6(input + 3.0) / 6.0


@contextmanager
def twice_differentiable_activations() -> Iterator[None]:
    """Replace ``F.hardsigmoid`` / ``F.hardswish`` (whose backward has no derivative of its own in torch) by the same
    functions written with ``relu6``, for the Hessian-vector product; equal values, never in place."""
    saved = F.hardsigmoid, F.hardswish
    F.hardsigmoid, F.hardswish = _hardsigmoid, _hardswish
    try:
        yield
    finally:
        F.hardsigmoid, F.hardswish = saved


@register_criterion
@dataclass
class GraSPCriterion(Criterion):
    """GraSP's score ``S = -w * (H g)``, with ``g = dL/dw`` and ``H`` the Hessian of the loss.

    GraSP removes the weights with the *largest* ``S`` (their removal reduces gradient flow least). This criterion
    returns an importance where higher means keep, so it returns ``-S = w * (H g)``; keeping its top-k is GraSP's
    rule. ``H g`` is a Hessian-vector product by double backward: ``g`` is averaged over ``num_batches`` batches and
    held fixed, then ``d(g . dL/dw)/dw`` is accumulated over the same batches. The original's logit temperature is
    not applied, so the loss is the model's own.

    Memory: only the prunable weights take gradients (the embedding's and the biases' are never formed), and with
    one batch and no masks in force ``g`` is the first-order gradient of the double-backward pass itself (held fixed,
    detached) instead of a separate pass: equal up to the attention kernel (that pass runs attention on its math
    kernel, a separate pass would not), one forward and backward pass less. The first-order gradients are dropped as
    the product ``g . dL/dw`` is formed and ``H g`` becomes the scores in place, so the peak holds one step's forward
    and first-order backward graphs, ``g`` and ``H g``. The double backward frees the graphs' tensors as it goes
    and allocates gradients of other sizes; the C heap's freed pages are handed back while it runs
    (``heap.releasing_during_backward``), so the process's peak is that of the live tensors (GPT-2 small: see
    BENCHMARKS.md, "Cost of every criterion").
    """

    name = "grasp"
    writes_weights = False
    needs_data = True

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        model, names = context.model, list(context.params)
        batches = self.read_batches(context)
        # With several batches g is their mean, needed before the first batch's product; with one it is that pass's.
        # A separate pass also when masks are in force (IRP re-scoring): there g is the gradient that ``.grad``
        # receives, which mask enforcement's gradient hooks zero at the pruned weights, as before.
        separate = len(batches) > 1 or context.existing is not None
        grads = average_gradients(model, names, batches, context.family) if separate else None
        weights = list(require_grad_only(model, names).values())
        hessian_grad: list[torch.Tensor] | None = None
        for index, batch in enumerate(batches):
            # The fused attention kernels (flash, memory-efficient, CPU flash) have no double backward; the math
            # kernel is plain differentiable ops, so attention models (BERT, GPT-2, ViT) get a Hessian too. The same
            # holds for hard-sigmoid / hard-swish (MobileNetV3, EfficientNet-lite in timm).
            with sdpa_kernel(SDPBackend.MATH), twice_differentiable_activations():
                loss = context.family.loss(model, batch) / len(batches)
                first = list(torch.autograd.grad(loss, weights, create_graph=True))
                fixed = [f.detach() for f in first] if grads is None else [grads[n] for n in names]
                # g . dL/dw, dropping each first-order gradient once used: the double backward reads none of them
                # (each product saves only the fixed g), and, after the last batch, nothing of ours holds g either:
                # the graph frees each of its tensors once used. Model-sized sets of tensors less at the peak.
                dot = torch.zeros((), device=loss.device, dtype=loss.dtype)
                for i in range(len(first)):
                    dot = dot + (first[i] * fixed[i]).sum()
                    first[i] = fixed[i] = None
                del loss, first, fixed
                if index == len(batches) - 1:
                    grads = None
                release_free_memory()  # what the first-order pass freed, before the double backward grows the heap
                with releasing_during_backward(dot):  # the heap's free pages, as the double backward frees
                    second = torch.autograd.grad(dot, weights)
                del dot
            if hessian_grad is None:
                hessian_grad = list(second)  # the first batch's product is the accumulator (0 + h is h)
            else:
                for acc, h in zip(hessian_grad, second, strict=True):
                    acc.add_(h)
            del second
        # In place: w * (H g) written into H g (equal to w.detach() * hg: multiplication commutes).
        return {n: hg.mul_(w.detach()) for n, w, hg in zip(names, weights, hessian_grad, strict=True)}
