"""Masks: the MaskSet container, selection from scores, and enforcement during training."""

from .enforce import MaskEnforcer, broadcast_masks, zero_pruned_weights
from .maskset import MASK_CONFIG_NAME, MASK_WEIGHTS_NAME, LayerReport, MaskSet
from .selection import SCOPES, SCORE_SCOPES, Scope, check_scores, check_sparsity, num_to_keep, select_masks

__all__ = [
    "MASK_CONFIG_NAME",
    "MASK_WEIGHTS_NAME",
    "SCOPES",
    "SCORE_SCOPES",
    "LayerReport",
    "MaskEnforcer",
    "MaskSet",
    "Scope",
    "broadcast_masks",
    "check_scores",
    "check_sparsity",
    "num_to_keep",
    "select_masks",
    "zero_pruned_weights",
]
