"""GraSP: gradient signal preservation (Wang et al. 2020, arXiv 2002.07376)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..gradients import average_gradients
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
    """

    name = "grasp"
    writes_weights = False
    needs_data = True

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        model, names = context.model, list(context.params)
        batches = self.read_batches(context)
        grads = average_gradients(model, names, batches, context.family)
        weights = [context.params[n].param for n in names]
        hessian_grad = [torch.zeros_like(w) for w in weights]
        for batch in batches:
            # The fused attention kernels (flash, memory-efficient, CPU flash) have no double backward; the math
            # kernel is plain differentiable ops, so attention models (BERT, GPT-2, ViT) get a Hessian too. The same
            # holds for hard-sigmoid / hard-swish (MobileNetV3, EfficientNet-lite in timm).
            with sdpa_kernel(SDPBackend.MATH), twice_differentiable_activations():
                loss = context.family.loss(model, batch) / len(batches)
                first = torch.autograd.grad(loss, weights, create_graph=True)
                dot = sum((g * grads[n]).sum() for g, n in zip(first, names, strict=True))
                second = torch.autograd.grad(dot, weights)
            for acc, h in zip(hessian_grad, second, strict=True):
                acc.add_(h)
        return {n: (w.detach() * hg) for n, w, hg in zip(names, weights, hessian_grad, strict=True)}
