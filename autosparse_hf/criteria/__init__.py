"""Pruning-at-initialization criteria, one module each, registered by name (``list_criteria()``)."""

from . import autos, force, grasp, magnitude, ntksap, prospr, random, snip, synflow, ticket  # noqa: F401  (registration)
from .base import (
    Criterion,
    ScoringContext,
    compute_scores,
    criterion_class,
    get_criterion,
    list_criteria,
    register_criterion,
)

__all__ = ["Criterion", "ScoringContext", "compute_scores", "criterion_class", "get_criterion", "list_criteria", "register_criterion"]
