"""SNIP: connection sensitivity at initialization (Lee et al. 2019, arXiv 1810.02340)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..gradients import average_gradients
from .base import Criterion, ScoringContext, register_criterion


@register_criterion
@dataclass
class SNIPCriterion(Criterion):
    """Score ``s = |w * dL/dw|``, the gradient averaged over ``num_batches`` batches (model in eval mode).

    Example:
        ```python
        >>> masks = autosparse_hf.prune_at_init(model, "snip", sparsity=0.9, dataloader=loader, num_batches=4)
        ```
    """

    name = "snip"
    writes_weights = False
    needs_data = True

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        batches = self.read_batches(context)
        grads = average_gradients(context.model, context.params, batches, context.family)
        # In place: the gradients become the scores (w * g is g * w exactly), no second model-sized set of tensors.
        return {name: grads[name].mul_(p.param.detach()).abs_() for name, p in context.params.items()}
