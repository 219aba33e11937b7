"""Build the surviving-score ``datasets.Dataset`` from whole arrays (no Python loop per weight)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetInfo

from ..features import InitialFeatures
from .score_schema import SCORE_FEATURES, SCORE_SCHEMA_VERSION

# The key of the schema version in the JSON description (``DatasetInfo.description``, and the Parquet metadata).
SCHEMA_KEY = "autosparse_score_schema"


# Characters per chunk of a repeated string column. Arrow's ``string`` type addresses a chunk's characters with int32
# offsets (2 GiB at most): GPT-2 small's 85M parameter names (about 30 characters each) overflowed one chunk.
STRING_CHUNK_BYTES = 1 << 30


def _repeat_strings(values: list[str], repeats: np.ndarray) -> pa.ChunkedArray:
    # pc.take on a small string array is a vectorized gather: fast even for tens of millions of rows.
    dictionary = pa.array(values, pa.string())
    indices = np.repeat(np.arange(len(values)), repeats)
    longest = max((len(v.encode()) for v in values), default=0)
    step = max(1, STRING_CHUNK_BYTES // max(longest, 1))
    chunks = [pc.take(dictionary, pa.array(indices[i : i + step])) for i in range(0, len(indices), step)]
    return pa.chunked_array(chunks, type=pa.string())


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
        SCHEMA_KEY: SCORE_SCHEMA_VERSION,
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


def description_documents(description: str | None) -> list[dict[str, Any]]:
    """Every JSON object of a score dataset's description.

    ``concatenate_datasets`` joins the descriptions of several datasets with blank lines, so a merged dataset's
    description is a sequence of JSON documents, one per source; reading stops at the first text that is not JSON.
    """
    text = description or ""
    decoder = json.JSONDecoder()
    documents: list[dict[str, Any]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return documents
        try:
            document, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return documents
        if isinstance(document, dict):
            documents.append(document)


def score_schema_versions(description: str | None) -> list[int | str]:
    """The score schema version of every source a description records (empty if none records one).

    A version that is not an integer is returned as it is, so that the caller can name it in an error.
    """
    versions: list[int | str] = []
    for document in description_documents(description):
        value = document.get(SCHEMA_KEY)
        if value is None:
            continue
        versions.append(value if isinstance(value, int) and not isinstance(value, bool) else str(value))
    return versions


def score_schema_version(dataset: Dataset) -> int | None:
    """The score schema version a dataset was written with (``None`` if it is not a score dataset).

    Raises:
        ValueError: a merged dataset whose sources record different versions.
    """
    versions = set(score_schema_versions(dataset.info.description))
    if not versions:
        return None
    if len(versions) > 1:
        raise ValueError(f"the dataset merges score schema versions {sorted(map(str, versions))}")
    (version,) = versions
    return version if isinstance(version, int) else None


# Float columns that must be finite: a NaN feature or target silently poisons training and tickets.
FINITE_COLUMNS: tuple[str, ...] = ("relative_depth", "input_std", "w0", "g0", "surviving_score")
# Validation reads the table in slices this long: whole-array numpy per slice, bounded memory at 10M+ rows.
_VALIDATION_ROWS = 1 << 20
# A stored surviving score may differ from (cycle_pruned - 1) / cycles by float32 rounding, nothing more.
_SCORE_TOLERANCE = 4 * float(np.finfo(np.float32).eps)


def validate_score_table(table: pa.Table | Iterable[pa.Table | pa.RecordBatch], source: str) -> None:
    """Check a surviving-score table row by row, vectorized (numpy on slices of up to 2**20 rows).

    Checks: no missing values; finite ``relative_depth``, ``input_std``, ``w0``, ``g0``, ``surviving_score``;
    ``cycles >= 1``; ``cycle_pruned`` in ``[1, cycles + 1]``; ``survived == (cycle_pruned == cycles + 1)``;
    ``surviving_score == (cycle_pruned - 1) / cycles`` up to float32 rounding.

    Args:
        table: The rows, as one Arrow table or as consecutive slices (tables or record batches).
        source: Where the rows come from, named in errors.

    Raises:
        ValueError: naming ``source``, the column, how many rows fail and the first of them.
    """
    slices = table.to_batches(max_chunksize=_VALIDATION_ROWS) if isinstance(table, pa.Table) else table
    offset = 0
    for part in slices:
        _validate_slice(part, source, offset)
        offset += part.num_rows


def validate_score_dataset(dataset: Dataset, source: str) -> None:
    """:func:`validate_score_table` on a ``datasets.Dataset`` (memory-mapped slices, row selections honoured)."""
    validate_score_table(dataset.with_format("arrow").iter(batch_size=_VALIDATION_ROWS), source)


def _validate_slice(part: pa.Table | pa.RecordBatch, source: str, offset: int) -> None:
    for name in SCORE_FEATURES:
        if part.column(name).null_count:
            missing = np.asarray(part.column(name).is_null().to_numpy(zero_copy_only=False))
            _check(source, name, missing, "missing value(s)", offset, lambda i: "null")

    def values(name: str) -> np.ndarray:
        return np.asarray(part.column(name).to_numpy(zero_copy_only=False))

    for name in FINITE_COLUMNS:
        column = values(name)
        _check(source, name, ~np.isfinite(column), "non-finite value(s)", offset, lambda i, c=column: str(c[i]))
    # int64: cycles + 1 must not wrap around in the stored int16.
    cycles, pruned = values("cycles").astype(np.int64), values("cycle_pruned").astype(np.int64)
    _check(source, "cycles", cycles < 1, "value(s) below 1", offset, lambda i: str(cycles[i]))
    _check(source, "cycle_pruned", (pruned < 1) | (pruned > cycles + 1), "value(s) outside [1, cycles + 1]", offset,
           lambda i: f"{pruned[i]} with cycles {cycles[i]}")
    survived = values("survived").astype(bool)
    _check(source, "survived", survived != (pruned == cycles + 1),
           "row(s) that disagree with cycle_pruned == cycles + 1", offset,
           lambda i: f"{survived[i]} with cycle_pruned {pruned[i]} and cycles {cycles[i]}")
    score, expected = values("surviving_score").astype(np.float64), (pruned - 1) / cycles
    _check(source, "surviving_score", np.abs(score - expected) > _SCORE_TOLERANCE,
           "row(s) that disagree with (cycle_pruned - 1) / cycles", offset,
           lambda i: f"{score[i]:.7g}, expected {expected[i]:.7g}")


def _check(
    source: str, name: str, bad: np.ndarray, problem: str, offset: int, describe: Callable[[int], str]
) -> None:
    """Raise naming the column, how many rows of the slice are ``bad`` and the first of them (``describe``d)."""
    if not bad.any():
        return
    first = int(np.argmax(bad))
    raise ValueError(
        f"{source}: column {name!r} has {int(bad.sum())} {problem} (first at row {offset + first}: "
        f"{describe(first)}); the score dataset is corrupt"
    )
