"""Layer budgets as a first-class axis: allocations registered by name (``list_budgets()``)."""

from . import learned, rules, ticket  # noqa: F401  (registration)
from .base import (
    Allocation,
    ExplicitCounts,
    LayerBudgets,
    allocation_class,
    get_allocation,
    list_budgets,
    register_allocation,
)

__all__ = [
    "Allocation",
    "ExplicitCounts",
    "LayerBudgets",
    "allocation_class",
    "get_allocation",
    "list_budgets",
    "register_allocation",
]
