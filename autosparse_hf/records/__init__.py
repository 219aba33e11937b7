"""Artifacts on disk: the IRP run (``IRPRecord``, the one owner of a run folder) and the surviving-score dataset
(schema, builder, card, save/load/merge/push), plus ticket reuse and the per-cycle report."""

from .irp_record import (
    IRPRecord,
    build_score_dataset_from_run,
    is_complete_run,
    load_ticket_source,
    nearest_ticket,
    read_run_info,
    resolve_run_folder,
    ticket_metadata,
)
from .layout import FINAL_MASK_DIR, RECORD_FILE, RUN_DIR, RUN_FILE
from .report import cycle_table_markdown, plot_irp_curve, write_cycle_report
from .score_card import score_dataset_card
from .score_dataset import build_score_dataset, score_schema_version
from .score_io import load_score_dataset, load_score_datasets, push_score_dataset, save_score_dataset
from .score_schema import (
    FEATURE_COLUMNS,
    IDENTITY_COLUMNS,
    LAYER_COLUMNS,
    SCORE_FEATURES,
    SCORE_SCHEMA_VERSION,
    TARGET_COLUMNS,
)
from .tickets import IRPTicketSource, ticket_source_from_dataset

__all__ = [
    "FEATURE_COLUMNS",
    "FINAL_MASK_DIR",
    "IDENTITY_COLUMNS",
    "IRPRecord",
    "IRPTicketSource",
    "LAYER_COLUMNS",
    "RECORD_FILE",
    "RUN_DIR",
    "RUN_FILE",
    "SCORE_FEATURES",
    "SCORE_SCHEMA_VERSION",
    "TARGET_COLUMNS",
    "build_score_dataset",
    "build_score_dataset_from_run",
    "cycle_table_markdown",
    "is_complete_run",
    "load_score_dataset",
    "load_score_datasets",
    "load_ticket_source",
    "nearest_ticket",
    "plot_irp_curve",
    "push_score_dataset",
    "read_run_info",
    "resolve_run_folder",
    "save_score_dataset",
    "score_dataset_card",
    "score_schema_version",
    "ticket_metadata",
    "ticket_source_from_dataset",
    "write_cycle_report",
]
