"""The surviving-score dataset schema (one row per prunable weight), versioned."""

from __future__ import annotations

from datasets import Features, Value

SCORE_SCHEMA_VERSION = 2

IDENTITY_COLUMNS = ("run_id", "model", "task", "seed")
LAYER_COLUMNS = ("param_name", "layer_kind", "fan_in", "fan_out", "depth", "relative_depth", "numel")
FEATURE_COLUMNS = ("w0", "g0", "unit_in", "unit_out", "input_std")
TARGET_COLUMNS = ("cycles", "cycle_pruned", "survived", "surviving_score")

SCORE_FEATURES = Features(
    {
        # Identity of the IRP run that produced the row.
        "run_id": Value("string"),
        "model": Value("string"),
        "task": Value("string"),
        "seed": Value("int64"),
        # Which weight: tensor name and flat position inside it.
        "param_name": Value("string"),
        "index": Value("int64"),
        # Layer context (see autosparse_hf.features.LayerContext).
        "layer_kind": Value("string"),
        "fan_in": Value("int32"),
        "fan_out": Value("int32"),
        "depth": Value("int32"),
        "relative_depth": Value("float32"),
        "numel": Value("int64"),
        # The units the weight connects (input feature/channel, output unit/channel) and the spread of the input
        # unit's activation over the feature batches.
        "unit_in": Value("int32"),
        "unit_out": Value("int32"),
        "input_std": Value("float32"),
        # Features at initialization.
        "w0": Value("float32"),
        "g0": Value("float32"),
        # Targets: pruned after cycle `cycle_pruned` of `cycles` (cycles + 1 = survived every cycle);
        # surviving_score = (cycle_pruned - 1) / cycles in [0, 1]. The IRP mask after cycle c is cycle_pruned > c.
        "cycles": Value("int16"),
        "cycle_pruned": Value("int16"),
        "survived": Value("bool"),
        "surviving_score": Value("float32"),
    }
)
