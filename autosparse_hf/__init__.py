"""autosparse_hf: learned pruning at initialization for the Hugging Face ecosystem.

AutoSparse (Liu et al. 2024, "Learning effective pruning at initialization from iterative pruning",
arXiv 2408.14757) on transformers, datasets, accelerate, evaluate, torch and timm.

The public names are imported on first use (PEP 562, as ``transformers`` does): ``import autosparse_hf`` is cheap,
and ``from autosparse_hf import X`` / ``autosparse_hf.X`` import only what ``X`` needs.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

# Submodule -> the public names it defines. Kept equal to the TYPE_CHECKING imports below (tests/package).
_EXPORTS: dict[str, list[str]] = {
    "allocation": ["Allocation", "LayerBudgets", "get_allocation", "list_budgets", "register_allocation"],
    "callbacks": ["AutoSCallback", "PaICallback"],
    "criteria": [
        "Criterion", "ScoringContext", "compute_scores", "get_criterion", "list_criteria", "register_criterion",
    ],
    "families": ["TimmForImageClassification", "get_family", "get_prunable_parameters"],
    "features": ["FEATURE_SCHEMA_VERSION", "InitialFeatures", "LayerContext", "compute_initial_features"],
    "irp": ["IRPCallback", "IRPConfig", "kept_counts"],
    "masks": ["MaskEnforcer", "MaskSet", "select_masks"],
    "predictor": ["AutoSConfig", "AutoSModel", "load_predictor"],
    "pruning": ["PruneConfig", "prune_at_init"],
    "records": [
        "IRPRecord",
        "build_score_dataset",
        "build_score_dataset_from_run",
        "load_score_dataset",
        "load_score_datasets",
        "push_score_dataset",
        "save_score_dataset",
    ],
    "training": ["TrainRecipe", "train_and_evaluate"],
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from .allocation import Allocation, LayerBudgets, get_allocation, list_budgets, register_allocation
    from .callbacks import AutoSCallback, PaICallback
    from .criteria import (
        Criterion,
        ScoringContext,
        compute_scores,
        get_criterion,
        list_criteria,
        register_criterion,
    )
    from .families import TimmForImageClassification, get_family, get_prunable_parameters
    from .features import FEATURE_SCHEMA_VERSION, InitialFeatures, LayerContext, compute_initial_features
    from .irp import IRPCallback, IRPConfig, kept_counts
    from .masks import MaskEnforcer, MaskSet, select_masks
    from .predictor import AutoSConfig, AutoSModel, load_predictor
    from .pruning import PruneConfig, prune_at_init
    from .records import (
        IRPRecord,
        build_score_dataset,
        build_score_dataset_from_run,
        load_score_dataset,
        load_score_datasets,
        push_score_dataset,
        save_score_dataset,
    )
    from .training import TrainRecipe, train_and_evaluate

__all__ = [
    "Allocation",
    "IRPRecord",
    "LayerBudgets",
    "PruneConfig",
    "get_allocation",
    "list_budgets",
    "register_allocation",
    "AutoSCallback",
    "AutoSConfig",
    "AutoSModel",
    "load_predictor",
    "FEATURE_SCHEMA_VERSION",
    "IRPCallback",
    "IRPConfig",
    "InitialFeatures",
    "LayerContext",
    "TrainRecipe",
    "build_score_dataset",
    "build_score_dataset_from_run",
    "compute_initial_features",
    "kept_counts",
    "load_score_dataset",
    "load_score_datasets",
    "push_score_dataset",
    "save_score_dataset",
    "train_and_evaluate",
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
