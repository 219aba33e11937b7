"""Save, load, merge and push surviving-score datasets.

Every format records the score schema version, and loading checks it: a ``save_to_disk`` folder in
``DatasetInfo.description``, a Parquet file written by :func:`save_score_dataset` in its schema metadata (key
``autosparse_score_dataset``, the same JSON description; ``datasets`` itself keeps only the features there), a Hub
dataset in the YAML header of its card (``README.md``: ``autosparse_score_schema``, one version per config, written by
:func:`push_score_dataset`; the Parquet shards ``push_to_hub`` writes keep no description). A Hub repo is read the same
way once downloaded, so a local folder laid out like one (``README.md`` and the configs' Parquet shards) loads and is
checked alike. Files that record no version (Parquet written before the version was stored, ``Dataset.to_parquet``
exports, Hub datasets pushed before the card recorded it) are read as schema version 2 only if their column types
are exactly version 2's, and only while this library reads version 2; anything else without a version is refused,
since nothing says which schema it follows. Every load then validates the rows (``validate_score_dataset``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from datasets import Dataset, concatenate_datasets, load_from_disk

from .score_card import score_dataset_card
from .score_dataset import SCHEMA_KEY, score_schema_versions, validate_score_dataset
from .score_schema import SCORE_FEATURES, SCORE_SCHEMA_VERSION

SCORES_DIR = "scores"
PARQUET_FILE = "scores.parquet"
# The card of a Hub dataset repo; its YAML header records the score schema version of every config.
HUB_CARD_FILE = "README.md"
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
    if _is_hub_layout(path):
        return _read_hub_layout(str(path), path / HUB_CARD_FILE, **hub_kwargs)
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
    from huggingface_hub import errors, hf_hub_download

    download = {k: hub_kwargs[k] for k in ("revision", "token") if k in hub_kwargs}
    try:
        card = Path(hf_hub_download(str(source), HUB_CARD_FILE, repo_type="dataset", **download))
    except getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError):
        card = None  # a repo without a card records no version
    return _read_hub_layout(str(source), card, **hub_kwargs)


def _is_hub_layout(path: Path) -> bool:
    """A folder laid out like a Hub dataset repo (a card whose header describes the data, as ``push_to_hub`` writes
    it), not a ``save_to_disk`` folder."""
    card = path / HUB_CARD_FILE
    if not card.is_file() or (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
        return False
    from huggingface_hub.repocard import metadata_load

    header = metadata_load(card) or {}
    return any(key in header for key in ("configs", "dataset_info", SCHEMA_KEY))


def _read_hub_layout(repo: str, card: Path | None, **hub_kwargs: Any) -> Dataset:
    """A Hub dataset (a repo id, or a local folder laid out like one) with the version its card records for the
    config that was loaded, as a description :func:`check_score_schema_version` reads."""
    from datasets import load_dataset

    dataset = load_dataset(repo, split="train", **hub_kwargs)
    config = hub_kwargs.get("name") or dataset.info.config_name or "default"
    version = hub_card_schema_version(card, config) if card is not None and card.is_file() else None
    if version is not None:
        dataset.info.description = json.dumps({SCHEMA_KEY: version, "hub_config": config})
    return dataset


def hub_card_schema_version(card: Path, config: str) -> int | None:
    """The score schema version a Hub dataset card (``README.md``) records for ``config`` (``None``: none recorded).

    The YAML header's ``autosparse_score_schema`` is either one version for every config or a mapping from config
    name to version (what :func:`push_score_dataset` writes).

    Raises:
        ValueError: naming the card file, the field and the versions, when the recorded version is not this
            library's or not an integer.
    """
    from huggingface_hub.repocard import metadata_load

    recorded = (metadata_load(card) or {}).get(SCHEMA_KEY)
    field = SCHEMA_KEY
    if isinstance(recorded, dict):
        field = f"{SCHEMA_KEY}.{config}"
        recorded = recorded.get(config)
    if recorded is None:
        return None
    if not isinstance(recorded, int) or isinstance(recorded, bool) or recorded != SCORE_SCHEMA_VERSION:
        raise ValueError(
            f"{card}: {field} records score schema version {recorded!r} for config {config!r}; this library reads "
            f"{SCORE_SCHEMA_VERSION}"
        )
    return recorded


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
    check_score_dataset(dataset, str(source))
    return dataset


def check_score_dataset(dataset: Dataset, source: str) -> None:
    """What every score dataset passes before use, from disk, the Hub or memory: the score columns, the schema
    version (``check_score_schema_version``) and every row (``validate_score_dataset``).

    Raises:
        ValueError: naming ``source`` and the column (or the versions).
    """
    missing = [c for c in SCORE_FEATURES if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{source} is not a surviving-score dataset: missing columns {missing}")
    check_score_schema_version(dataset, source)
    validate_score_dataset(dataset, source)


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
    check_score_dataset(dataset, f"the score dataset pushed to {repo_id}")  # nothing invalid leaves the machine
    run_ids = dataset.unique("run_id")
    name = config_name or (run_ids[0] if len(run_ids) == 1 else "default")
    dataset.push_to_hub(repo_id, config_name=name, private=private, token=token)
    # push_to_hub keeps only the features (the description, with the version, is lost): the card records it.
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(repo_id, repo_type="dataset", token=token)
    card.data[SCHEMA_KEY] = with_hub_card_version(card.data.to_dict(), name)
    card.push_to_hub(repo_id, repo_type="dataset", token=token, commit_message=f"Record score schema version of {name}")


def with_hub_card_version(card_data: dict[str, Any], config: str) -> dict[str, int]:
    """The card's ``autosparse_score_schema`` mapping with ``config`` at this library's version (a single version
    recorded before is kept for the card's other configs)."""
    recorded = card_data.get(SCHEMA_KEY)
    if isinstance(recorded, dict):
        versions = dict(recorded)
    elif recorded is not None:
        versions = {c.get("config_name"): recorded for c in card_data.get("configs") or [] if isinstance(c, dict)}
    else:
        versions = {}
    versions[config] = SCORE_SCHEMA_VERSION
    return versions
