"""Score datasets on the Hub carry their schema version in the card, and loading checks it (issue 17, item 7).

``Dataset.push_to_hub`` keeps only the features in its Parquet shards and card, so ``push_score_dataset`` records the
version in the card's YAML header (``autosparse_score_schema``, one version per config). Offline, the Hub is a local
folder: ``push_to_hub`` and the card calls are redirected into it, and it is loaded as the downloaded repo is (as a
folder laid out like a Hub repo, and through the Hub-id branch with the download redirected).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from autos_utils import synthetic_run
from datasets import Dataset
from huggingface_hub import DatasetCard

from autosparse_hf.records import (
    SCORE_SCHEMA_VERSION,
    load_score_dataset,
    push_score_dataset,
    score_io,
    score_schema_version,
)

REPO = "someone/irp-scores"


@pytest.fixture(scope="module")
def clean() -> Dataset:
    return synthetic_run(seed=0)[3]


def _card(folder: Path) -> dict[str, Any]:
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1])


def _write_card(folder: Path, header: dict[str, Any]) -> None:
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n# Scores\n")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local folder standing in for the Hub repo ``REPO``: what push_to_hub and the card calls would write there."""
    folder = tmp_path / "hub"
    folder.mkdir()

    def push_to_hub(self: Dataset, repo_id: str, config_name: str = "default", **kwargs: Any) -> None:
        assert repo_id == REPO
        (folder / config_name).mkdir(exist_ok=True)
        self.to_parquet(str(folder / config_name / "train-00000-of-00001.parquet"))  # features only, as the Hub
        header = _card(folder) if (folder / "README.md").is_file() else {}
        configs = [c for c in header.get("configs", []) if c["config_name"] != config_name]
        configs.append(
            {"config_name": config_name, "data_files": [{"split": "train", "path": f"{config_name}/train-*"}]}
        )
        _write_card(folder, {**header, "configs": configs})

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # load_dataset caches here
    monkeypatch.setattr(score_io, "_hub_offline", lambda: False)
    monkeypatch.setattr(Dataset, "push_to_hub", push_to_hub)
    monkeypatch.setattr(
        DatasetCard, "load", classmethod(lambda cls, repo_id, **kwargs: cls((folder / "README.md").read_text()))
    )
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo_id, **kwargs: self.save(folder / "README.md"))
    return folder


def test_a_push_records_the_version_in_the_card_and_a_load_checks_it(clean: Dataset, hub: Path) -> None:
    push_score_dataset(clean, REPO)
    run_id = clean.unique("run_id")[0]
    assert _card(hub)["autosparse_score_schema"] == {run_id: SCORE_SCHEMA_VERSION}
    loaded = load_score_dataset(hub)  # the repo as downloaded
    assert score_schema_version(loaded) == SCORE_SCHEMA_VERSION
    assert loaded.data.table.equals(clean.data.table)
    # A second config keeps the first one's version.
    other = Dataset(clean.data.table, info=clean.info.copy())
    push_score_dataset(other, REPO, config_name="second")
    assert _card(hub)["autosparse_score_schema"] == {run_id: SCORE_SCHEMA_VERSION, "second": SCORE_SCHEMA_VERSION}
    second = load_score_dataset(hub, name="second")
    assert score_schema_version(second) == SCORE_SCHEMA_VERSION


@pytest.mark.parametrize("recorded", [99, "2", True, {"default": 99}], ids=["99", "string-2", "bool", "per-config-99"])
def test_a_card_with_another_version_is_refused_naming_file_field_and_versions(clean, hub: Path, recorded) -> None:  # noqa: ANN001
    (hub / "data").mkdir()
    clean.to_parquet(str(hub / "data" / "train-00000-of-00001.parquet"))
    _write_card(hub, {"autosparse_score_schema": recorded})
    field = "autosparse_score_schema.default" if isinstance(recorded, dict) else "autosparse_score_schema"
    shown = recorded["default"] if isinstance(recorded, dict) else recorded
    with pytest.raises(
        ValueError,
        match=rf"hub/README\.md: {field} records score schema version {shown!r} for config 'default'; this library "
        rf"reads {SCORE_SCHEMA_VERSION}",
    ):
        load_score_dataset(hub)


def test_a_card_without_a_version_is_read_only_as_the_unversioned_schema(clean: Dataset, hub: Path) -> None:
    """Repos pushed before the card recorded the version are version 2 with exactly its column types."""
    (hub / "data").mkdir()
    clean.to_parquet(str(hub / "data" / "train-00000-of-00001.parquet"))
    _write_card(hub, {"tags": ["autosparse"], "configs": [{"config_name": "default", "data_files": "data/*.parquet"}]})
    assert len(load_score_dataset(hub)) == len(clean)
    table = clean.data.table
    retyped = table.set_column(table.column_names.index("w0"), "w0", table.column("w0").cast(pa.float64()))
    pq.write_table(retyped.replace_schema_metadata(None), hub / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError, match=r"hub records no score schema version.*w0"):
        load_score_dataset(hub, cache_dir=str(hub.parent / "cache2"))  # a fresh cache: the shard was rewritten


def test_a_hub_id_is_checked_by_the_card_it_downloads(clean: Dataset, hub: Path, monkeypatch) -> None:  # noqa: ANN001
    """The Hub-id branch: the card is downloaded beside the data and checked alike (downloads redirected)."""
    import huggingface_hub

    push_score_dataset(clean, REPO)
    real_load_dataset = datasets.load_dataset
    monkeypatch.setattr(
        datasets, "load_dataset", lambda repo, **kw: real_load_dataset(str(hub) if repo == REPO else repo, **kw)
    )
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, filename, **kw: str(hub / filename))
    assert score_schema_version(load_score_dataset(REPO)) == SCORE_SCHEMA_VERSION
    header = _card(hub)
    header["autosparse_score_schema"] = {clean.unique("run_id")[0]: 99}
    _write_card(hub, header)
    with pytest.raises(
        ValueError, match=r"README\.md: autosparse_score_schema\.run-seed0 records score schema version 99"
    ):
        load_score_dataset(REPO)
