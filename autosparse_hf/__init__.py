"""autosparse_hf: learned pruning at initialization for the Hugging Face ecosystem.

AutoSparse (Liu et al. 2024, "Learning effective pruning at initialization from iterative pruning",
arXiv 2408.14757) on transformers, datasets, accelerate, evaluate, torch and timm.
"""

from .callbacks import PaICallback
from .criteria import Criterion, ScoringContext, compute_scores, get_criterion, list_criteria, register_criterion
from .families import TimmForImageClassification, get_family, get_prunable_parameters
from .masks import MaskEnforcer, MaskSet, select_masks
from .pruning import prune_at_init

__version__ = "0.1.0"

__all__ = [
    "Criterion",
    "MaskEnforcer",
    "MaskSet",
    "PaICallback",
    "ScoringContext",
    "TimmForImageClassification",
    "compute_scores",
    "get_criterion",
    "get_family",
    "get_prunable_parameters",
    "list_criteria",
    "prune_at_init",
    "register_criterion",
    "select_masks",
]
