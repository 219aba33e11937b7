"""Save, load, merge and push surviving-score datasets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_from_disk

from .score_card import score_dataset_card
from .score_dataset import score_schema_version
from .score_schema import SCORE_FEATURES, SCORE_SCHEMA_VERSION

SCORES_DIR = "scores"
PARQUET_FILE = "scores.parquet"


def save_score_dataset(dataset: Dataset, folder: str | Path, info: dict[str, Any]) -> Path:
    """Write ``folder/scores/`` (``save_to_disk`` + README.md card) and ``folder/scores.parquet``."""
    folder = Path(folder)
    target = folder / SCORES_DIR
    dataset.save_to_disk(str(target))
    (target / "README.md").write_text(score_dataset_card(info, len(dataset)))
    partial = folder / f".{PARQUET_FILE}.tmp"
    dataset.to_parquet(str(partial))
    os.replace(partial, folder / PARQUET_FILE)
    return target


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def load_score_dataset(source: str | Path, **hub_kwargs: Any) -> Dataset:
    """Load one score dataset: a ``save_to_disk`` folder, an IRP run folder, a Parquet file, or a Hub id.

    Raises:
        ValueError: the data lacks score columns or has another schema version.
        ConnectionError: a Hub id was given while offline (``HF_HUB_OFFLINE=1``).
    """
    path = Path(source)
    if path.is_dir() and (path / SCORES_DIR).is_dir():
        path = path / SCORES_DIR
    if path.is_dir():
        dataset = load_from_disk(str(path))
    elif path.is_file() and path.suffix == ".parquet":
        dataset = Dataset.from_parquet(str(path), features=None)
    elif path.exists():
        raise ValueError(f"{path} is neither a score dataset folder nor a .parquet file")
    else:
        if _hub_offline():
            raise ConnectionError(f"{source!r} is not a local path and the Hub is offline (HF_HUB_OFFLINE=1)")
        from datasets import load_dataset

        dataset = load_dataset(str(source), split="train", **hub_kwargs)
    missing = [c for c in SCORE_FEATURES if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{source} is not a surviving-score dataset: missing columns {missing}")
    version = score_schema_version(dataset)
    if version is not None and version != SCORE_SCHEMA_VERSION:
        raise ValueError(f"{source} has score schema version {version}; this library reads {SCORE_SCHEMA_VERSION}")
    return dataset


def load_score_datasets(sources: Sequence[str | Path], **hub_kwargs: Any) -> Dataset:
    """Load several score datasets (other seeds, other models) and concatenate them into one."""
    if not sources:
        raise ValueError("no score datasets given")
    datasets = [load_score_dataset(s, **hub_kwargs).cast(SCORE_FEATURES) for s in sources]
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
