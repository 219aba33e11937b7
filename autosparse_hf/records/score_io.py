"""Save, load, merge and push surviving-score datasets.

Every format records the score schema version, and loading checks it: a ``save_to_disk`` folder in
``DatasetInfo.description``, a Parquet file written by :func:`save_score_dataset` in its schema metadata (key
``autosparse_score_dataset``, the same JSON description; ``datasets`` itself keeps only the features there). Files
that record no version (Parquet written before the version was stored, ``Dataset.to_parquet`` exports, Hub datasets,
whose parquet shards and card carry no description) are read as schema version 2 only if their column types are
exactly version 2's, and only while this library reads version 2; anything else without a version is refused, since
nothing says which schema it follows. Every load then validates the rows (``validate_score_dataset``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from datasets import Dataset, concatenate_datasets, load_from_disk

from .score_card import score_dataset_card
from .score_dataset import score_schema_versions, validate_score_dataset
from .score_schema import SCORE_FEATURES, SCORE_SCHEMA_VERSION

SCORES_DIR = "scores"
PARQUET_FILE = "scores.parquet"
# Parquet schema metadata key holding the dataset's JSON description (with the schema version).
PARQUET_DESCRIPTION_KEY = b"autosparse_score_dataset"
# The one schema version whose files may carry none: this library's Parquet files recorded no version before it
# stored the description there, and all of those are version 2.
UNVERSIONED_SCHEMA_VERSION = 2
# Rows per Parquet write: bounded memory for datasets of tens of millions of rows.
_PARQUET_BATCH_ROWS = 1 << 18


def save_score_dataset(dataset: Dataset, folder: str | Path, info: dict[str, Any]) -> Path:
    """Write ``folder/scores/`` (``save_to_disk`` + README.md card) and ``folder/scores.parquet``.

    Both record the dataset's description (schema version, run identity, IRP config), so either loads alone.
    """
    folder = Path(folder)
    target = folder / SCORES_DIR
    dataset.save_to_disk(str(target))
    (target / "README.md").write_text(score_dataset_card(info, len(dataset)))
    partial = folder / f".{PARQUET_FILE}.tmp"
    write_score_parquet(dataset, partial)
    os.replace(partial, folder / PARQUET_FILE)
    return target


def write_score_parquet(dataset: Dataset, path: str | Path) -> None:
    """Write ``dataset`` as one Parquet file whose schema metadata also holds its description.

    ``Dataset.to_parquet`` stores only the features (key ``huggingface``); the description, with the schema version,
    goes beside them under ``autosparse_score_dataset``, so a Parquet file is checked like a folder.
    """
    schema = dataset.features.arrow_schema
    metadata = dict(schema.metadata or {})
    if dataset.info.description:
        metadata[PARQUET_DESCRIPTION_KEY] = dataset.info.description.encode()
    schema = schema.with_metadata(metadata)
    with pq.ParquetWriter(str(path), schema) as writer:
        for part in dataset.with_format("arrow").iter(batch_size=_PARQUET_BATCH_ROWS):
            writer.write_table(part.replace_schema_metadata(metadata))


def _parquet_description(path: Path) -> str | None:
    """The description a Parquet file's schema metadata records (``None`` if it records none)."""
    value = (pq.read_schema(str(path)).metadata or {}).get(PARQUET_DESCRIPTION_KEY)
    return value.decode() if value is not None else None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _read(source: str | Path, **hub_kwargs: Any) -> Dataset:
    """The dataset at ``source`` in whichever format it is, with its description where the format keeps one."""
    path = Path(source)
    if path.is_dir() and (path / SCORES_DIR).is_dir():
        path = path / SCORES_DIR
    if path.is_dir():
        return load_from_disk(str(path))
    if path.is_file() and path.suffix == ".parquet":
        dataset = Dataset.from_parquet(str(path), features=None)
        description = _parquet_description(path)
        if description is not None:
            dataset.info.description = description
        return dataset
    if path.exists():
        raise ValueError(f"{path} is neither a score dataset folder nor a .parquet file")
    if _hub_offline():
        raise ConnectionError(f"{source!r} is not a local path and the Hub is offline (HF_HUB_OFFLINE=1)")
    from datasets import load_dataset

    return load_dataset(str(source), split="train", **hub_kwargs)


def check_score_schema_version(dataset: Dataset, source: str) -> None:
    """Refuse a dataset of another score schema version, or one that records none and is not plainly version 2.

    Raises:
        ValueError: naming ``source`` and the version found (or the columns that differ from version 2's).
    """
    versions = score_schema_versions(dataset.info.description)
    other = sorted({repr(v) for v in versions if v != SCORE_SCHEMA_VERSION})  # repr: a string "2" is no 2
    if other:
        raise ValueError(
            f"{source} has score schema version {', '.join(other)}; this library reads {SCORE_SCHEMA_VERSION}"
        )
    if versions:
        return
    if SCORE_SCHEMA_VERSION != UNVERSIONED_SCHEMA_VERSION:
        raise ValueError(
            f"{source} records no score schema version; files without one are version {UNVERSIONED_SCHEMA_VERSION}, "
            f"this library reads {SCORE_SCHEMA_VERSION}"
        )
    differences = [
        f"{name}: {dataset.features.get(name)} (version {SCORE_SCHEMA_VERSION}: {SCORE_FEATURES.get(name)})"
        for name in dict.fromkeys([*SCORE_FEATURES, *dataset.features])
        if dataset.features.get(name) != SCORE_FEATURES.get(name)
    ]
    if differences:
        raise ValueError(
            f"{source} records no score schema version and its columns are not exactly those of version "
            f"{SCORE_SCHEMA_VERSION} ({'; '.join(differences)}); save it with save_score_dataset from a dataset "
            "built by this library"
        )


def load_score_dataset(source: str | Path, **hub_kwargs: Any) -> Dataset:
    """Load one score dataset: a ``save_to_disk`` folder, an IRP run folder, a Parquet file, or a Hub id.

    The schema version is checked for every format (see the module docstring) and every row is validated
    (``validate_score_dataset``: finite features and targets, targets consistent with ``cycle_pruned``).

    Raises:
        ValueError: the data lacks score columns, has another (or no recognisable) schema version, or holds bad rows;
            the message names ``source`` and the column.
        ConnectionError: a Hub id was given while offline (``HF_HUB_OFFLINE=1``).
    """
    dataset = _read(source, **hub_kwargs)
    missing = [c for c in SCORE_FEATURES if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{source} is not a surviving-score dataset: missing columns {missing}")
    check_score_schema_version(dataset, str(source))
    validate_score_dataset(dataset, str(source))
    return dataset


def _with_score_features(dataset: Dataset) -> Dataset:
    """``dataset`` with exactly the score columns and types, ready to concatenate.

    A loaded dataset normally has them already; casting it anyway would write a full-size ``cache-*.arrow`` into
    its source folder (``cast`` on a ``save_to_disk`` dataset), so it is cast only when it differs, in memory.
    """
    if dataset.column_names != list(SCORE_FEATURES):
        dataset = dataset.select_columns(list(SCORE_FEATURES))
    if dataset.features != SCORE_FEATURES:
        dataset = dataset.cast(SCORE_FEATURES, keep_in_memory=True)
    return dataset


def load_score_datasets(sources: Sequence[str | Path], **hub_kwargs: Any) -> Dataset:
    """Load several score datasets (other seeds, other models) and concatenate them into one.

    Nothing is written into the source folders.
    """
    if not sources:
        raise ValueError("no score datasets given")
    datasets = [_with_score_features(load_score_dataset(s, **hub_kwargs)) for s in sources]
    return datasets[0] if len(datasets) == 1 else concatenate_datasets(datasets)


def push_score_dataset(
    dataset: Dataset, repo_id: str, *, config_name: str | None = None, private: bool | None = None, token: str | None = None
) -> None:
    """Push to the Hub with ``datasets``' own API, one config per source run (default: the run id).

    Save locally first (``save_score_dataset``): offline this fails fast, and nothing local is lost.
    """
    if _hub_offline():
        raise ConnectionError(
            f"cannot push to {repo_id!r}: the Hub is offline (HF_HUB_OFFLINE=1); the local copy is unaffected"
        )
    run_ids = dataset.unique("run_id")
    name = config_name or (run_ids[0] if len(run_ids) == 1 else "default")
    dataset.push_to_hub(repo_id, config_name=name, private=private, token=token)
