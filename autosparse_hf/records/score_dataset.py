"""Build the surviving-score ``datasets.Dataset`` from whole arrays (no Python loop per weight)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetInfo

from ..features import InitialFeatures
from .score_schema import SCORE_FEATURES, SCORE_SCHEMA_VERSION


def _repeat_strings(values: list[str], repeats: np.ndarray) -> pa.Array:
    # pc.take on a small string array is a vectorized gather: fast even for tens of millions of rows.
    return pc.take(pa.array(values, pa.string()), pa.array(np.repeat(np.arange(len(values)), repeats)))


def build_score_dataset(
    features: InitialFeatures, cycle_pruned: Mapping[str, torch.Tensor], run_info: Mapping[str, Any]
) -> Dataset:
    """One row per prunable weight: run identity, position, layer context, ``w0``, ``g0`` and IRP targets.

    Args:
        features: Initial features of the run (``compute_initial_features``).
        cycle_pruned: Per tensor, the cycle after which each weight was pruned (``cycles + 1`` = survived).
        run_info: ``IRPCallback.run_info()``: configuration, identity, schedule and per-cycle history.
    """
    cycles = int(run_info["config"]["cycles"])
    identity = run_info["identity"]
    layers = features.layers
    sizes = np.array([layer.numel for layer in layers], dtype=np.int64)
    n_rows = int(sizes.sum())
    names = [layer.name for layer in layers]
    pruned = np.concatenate([cycle_pruned[n].reshape(-1).cpu().numpy().astype(np.int16) for n in names])
    if pruned.min() < 1 or pruned.max() > cycles + 1:
        raise ValueError(f"cycle_pruned values must lie in [1, {cycles + 1}]")

    units = {n: features.unit_columns(n) for n in names}

    def per_layer(attr: str, dtype: Any) -> pa.Array:
        return pa.array(np.repeat(np.array([getattr(layer, attr) for layer in layers], dtype=dtype), sizes))

    columns = {
        "run_id": _repeat_strings([str(identity.get("run_id") or "")], np.array([n_rows])),
        "model": _repeat_strings([str(identity.get("model") or "")], np.array([n_rows])),
        "task": _repeat_strings([str(identity.get("task") or "")], np.array([n_rows])),
        "seed": pa.array(np.full(n_rows, int(identity.get("seed") or 0), dtype=np.int64)),
        "param_name": _repeat_strings(names, sizes),
        "index": pa.array(np.concatenate([np.arange(s, dtype=np.int64) for s in sizes])),
        "layer_kind": _repeat_strings([layer.kind for layer in layers], sizes),
        "fan_in": per_layer("fan_in", np.int32),
        "fan_out": per_layer("fan_out", np.int32),
        "depth": per_layer("depth", np.int32),
        "relative_depth": per_layer("relative_depth", np.float32),
        "numel": per_layer("numel", np.int64),
        "unit_in": pa.array(np.concatenate([units[n]["unit_in"].numpy().astype(np.int32) for n in names])),
        "unit_out": pa.array(np.concatenate([units[n]["unit_out"].numpy().astype(np.int32) for n in names])),
        "input_std": pa.array(np.concatenate([units[n]["input_std"].numpy().astype(np.float32) for n in names])),
        "w0": pa.array(np.concatenate([features.weights[n].reshape(-1).float().cpu().numpy() for n in names])),
        "g0": pa.array(np.concatenate([features.gradients[n].reshape(-1).float().cpu().numpy() for n in names])),
        "cycles": pa.array(np.full(n_rows, cycles, dtype=np.int16)),
        "cycle_pruned": pa.array(pruned),
        "survived": pa.array(pruned == cycles + 1),
        "surviving_score": pa.array(((pruned - 1) / cycles).astype(np.float32)),
    }
    table = pa.table(columns).cast(SCORE_FEATURES.arrow_schema)
    description = {
        "autosparse_score_schema": SCORE_SCHEMA_VERSION,
        "identity": dict(identity),
        "irp_config": run_info["config"],
        "densities": run_info.get("densities"),
        "history": run_info.get("history"),
        "layers": run_info.get("layers"),
    }
    info = DatasetInfo(
        description=json.dumps(description),
        features=SCORE_FEATURES,
        version=f"{SCORE_SCHEMA_VERSION}.0.0",
    )
    # An explicit fingerprint: without one, datasets hashes the whole table (seconds and gigabytes at 11M rows).
    fingerprint = f"autosparse-scores-v{SCORE_SCHEMA_VERSION}-{identity.get('run_id')}-{n_rows}"
    return Dataset(table, info=info, fingerprint=fingerprint)


def score_schema_version(dataset: Dataset) -> int | None:
    """The score schema version a dataset was written with (``None`` if it is not a score dataset)."""
    try:
        return int(json.loads(dataset.info.description or "{}").get("autosparse_score_schema"))
    except (ValueError, TypeError):
        return None
