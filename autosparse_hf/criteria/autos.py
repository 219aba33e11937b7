"""AutoS: the learned pruning-at-initialization criterion of AutoSparse (arXiv 2408.14757)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..features import compute_initial_features, layer_feature_matrix
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
        batch_size: Rows per prediction chunk.
        num_batches: Batches for ``g0``; default: what the predictor's config says.
    """

    name = "autos"
    predictor: Any = None
    batch_size: int = 65536
    num_batches: int | None = None

    def __post_init__(self) -> None:
        from ..predictor import load_predictor

        if self.predictor is None:
            raise ValueError("criterion 'autos' needs a predictor: criterion_options={'predictor': <folder or model>}")
        self.model = load_predictor(self.predictor)
        uses_gradient = self.model.config.feature_set != "weight"
        self.needs_data = uses_gradient

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        config = self.model.config
        num_batches = self.num_batches or config.feature_num_batches
        if self.needs_data:
            features = compute_initial_features(context.model, context.dataloader, num_batches, params=context.params)
        else:
            features = None
        scores = {}
        for name, p in context.params.items():
            w0 = p.param.detach()
            g0 = features.gradients[name] if features is not None else torch.zeros_like(w0)
            layer = features.layers[p.depth] if features is not None else _layer(context, name)
            matrix = layer_feature_matrix(w0, g0, layer, config.feature_set)
            scores[name] = self.model.predict(matrix, self.batch_size).reshape(p.param.shape).to(p.param.device)
        return scores


def _layer(context: ScoringContext, name: str):  # noqa: ANN202
    from ..features import layer_contexts

    return next(layer for layer in layer_contexts(context.params) if layer.name == name)
