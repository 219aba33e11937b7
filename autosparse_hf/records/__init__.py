"""The surviving-score dataset: schema, builder, card, save/load/merge/push."""

from .builder import build_score_dataset, build_score_dataset_from_run, score_schema_version
from .card import score_dataset_card
from .io import load_score_dataset, load_score_datasets, push_score_dataset, save_score_dataset
from .schema import (
    FEATURE_COLUMNS,
    IDENTITY_COLUMNS,
    LAYER_COLUMNS,
    SCORE_FEATURES,
    SCORE_SCHEMA_VERSION,
    TARGET_COLUMNS,
)

__all__ = [
    "FEATURE_COLUMNS",
    "IDENTITY_COLUMNS",
    "LAYER_COLUMNS",
    "SCORE_FEATURES",
    "SCORE_SCHEMA_VERSION",
    "TARGET_COLUMNS",
    "build_score_dataset",
    "build_score_dataset_from_run",
    "load_score_dataset",
    "load_score_datasets",
    "push_score_dataset",
    "save_score_dataset",
    "score_dataset_card",
    "score_schema_version",
]
