"""AutoS: the learned pruning-at-initialization criterion of AutoSparse (arXiv 2408.14757)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..features import InitialFeatures, compute_initial_features, iter_feature_matrices, layer_contexts, with_density
from .base import Criterion, ScoringContext, register_criterion


@register_criterion
@dataclass
class AutoSCriterion(Criterion):
    """Score ``s = AutoS(features(w0, g0, layer))``: the predicted IRP surviving score of each weight.

    The features are computed with the same code that built the predictor's training rows
    (``autosparse_hf.features``), one tensor at a time, and predicted in chunks of ``batch_size`` rows, so memory stays
    bounded by the largest tensor's feature matrix.

    Args:
        predictor: An ``AutoSModel``, a folder saved with ``save_pretrained``, or a Hub id.
        batch_size: Rows per prediction chunk (default 65536, 256 for ``paper_resnet18``, whose activations per row
            are large).
        num_batches: Batches for ``g0``; default: what the predictor's config says.
    """

    name = "autos"
    predictor: Any = None
    batch_size: int | None = None
    num_batches: int | None = None

    def __post_init__(self) -> None:
        from ..predictor import load_predictor

        if self.predictor is None:
            raise ValueError("criterion 'autos' needs a predictor: criterion_options={'predictor': <folder or model>}")
        self.model = load_predictor(self.predictor)
        if self.batch_size is None:
            self.batch_size = 256 if self.model.config.architecture == "paper_resnet18" else 65536
        uses_gradient = self.model.config.feature_set != "weight" or self.model.config.within_layer == "snip"
        self.needs_data = uses_gradient

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        config = self.model.config
        num_batches = self.num_batches or config.feature_num_batches
        if self.needs_data:
            features = compute_initial_features(context.model, context.dataloader, num_batches, params=context.params)
        else:
            features = InitialFeatures(
                weights={n: p.param.detach() for n, p in context.params.items()},
                gradients={n: torch.zeros_like(p.param) for n, p in context.params.items()},
                layers=layer_contexts(context.params),
                num_batches=0,
            )
        if config.within_layer == "snip":
            # Learned budgets, SNIP's choice inside each tensor (|w0 g0| on the batches the features used).
            return {n: (features.weights[n] * features.gradients[n]).abs().to(p.param.device)
                    for n, p in context.params.items()}
        scores = {}
        for layer, matrix in iter_feature_matrices(features, config.feature_set):
            if config.target == "membership":
                # "Is this weight in the ticket at the density we prune to?"
                matrix = with_density(matrix, max(1.0 - context.sparsity, 1e-6))
            param = context.params[layer.name].param
            scores[layer.name] = self.model.predict(matrix, self.batch_size).reshape(param.shape).to(param.device)
        return scores

    def layer_counts(self, params: dict[str, Any], sparsity: float) -> dict[str, int] | None:
        """The predictor's learned layer budgets at ``sparsity``, when it has a budget model."""
        budget_model = self.model.config.budget_model
        if not budget_model:
            return None
        from ..predictor.budgets import predict_layer_counts

        return predict_layer_counts(budget_model, layer_contexts(params), 1.0 - sparsity)


@register_criterion
@dataclass
class AutoSPaperCriterion(AutoSCriterion):
    """The paper-faithful AutoS criterion: the predictor's scores under one global threshold, no layer budgets.

    Use it with a predictor trained the paper's way (``feature_set="paper"``: raw ``w0`` and ``g0``; target the
    surviving score; MSE) to reproduce AutoSparse (arXiv 2408.14757) as published.
    """

    name = "autos_paper"

    def layer_counts(self, params: dict[str, Any], sparsity: float) -> dict[str, int] | None:
        return None
