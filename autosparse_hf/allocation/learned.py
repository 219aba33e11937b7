"""``learned``: per-tensor budgets predicted by an AutoS predictor's layer-budget model.

At high sparsity the split of the kept weights between layers decides accuracy more than the ranking inside a layer
(METHOD notes, sections 6-7). The budget model is fitted on the IRP masks of every cycle of the source run(s)
(``autosparse_hf.predictor.budgets``); with SynFlow ranking inside, it is the library's default AutoS recipe.
AutoSparse: Liu et al. 2024, arXiv 2408.14757.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..families import PrunableParameter
from ..features import layer_contexts
from ..predictor.budgets import predict_layer_counts
from ..predictor.loading import load_predictor
from .base import Allocation, LayerBudgets, register_allocation


@register_allocation
@dataclass
class LearnedAllocation(Allocation):
    """Kept weights per tensor from the layer-budget model of ``predictor`` (each tensor keeps at least one).

    Args:
        predictor: An ``AutoSModel``, a folder saved with ``save_pretrained``, or a Hub id; it must have a budget
            model (trained with ``budgets="learned"``).
    """

    name: ClassVar[str] = "learned"
    predictor: Any = None

    def __post_init__(self) -> None:
        if self.predictor is None:
            raise ValueError('budgets="learned" needs predictor (an AutoS predictor with a layer-budget model)')
        self.model = load_predictor(self.predictor)
        if not self.model.config.budget_model:
            raise ValueError(
                f"the AutoS predictor {self.model.name_or_path or type(self.model).__name__} has no layer-budget "
                "model (it was trained with budgets='none'); use another budgets rule"
            )

    def allocate(self, params: dict[str, PrunableParameter], sparsity: float, model_class: str = "model") -> LayerBudgets:
        counts = predict_layer_counts(self.model.config.budget_model, layer_contexts(params), 1.0 - sparsity)
        return LayerBudgets("counts", counts, {"budget_predictor": str(self.model.name_or_path or "")})
