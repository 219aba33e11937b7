"""Score datasets validate themselves on load (issue 17, items 7 and 11): finite features and targets, targets
consistent with ``cycle_pruned``, the schema version for every format (Parquet too), no cache written into the
source folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from autos_utils import CYCLES, synthetic_run
from datasets import Dataset

from autosparse_hf.records import (
    SCORE_FEATURES,
    SCORE_SCHEMA_VERSION,
    load_score_dataset,
    load_score_datasets,
    save_score_dataset,
    score_schema_version,
)


@pytest.fixture(scope="module")
def clean() -> tuple[Dataset, dict]:
    """A valid synthetic score dataset (4,464 rows, 5 cycles) and its run info."""
    _, _, _, dataset, info = synthetic_run(seed=0)
    return dataset, info


def with_column(dataset: Dataset, name: str, values: np.ndarray) -> Dataset:
    """``dataset`` with column ``name`` replaced (same type), its description (schema version) kept."""
    table = dataset.data.table
    i = table.column_names.index(name)
    table = table.set_column(i, name, pa.array(values, type=table.schema.field(name).type))
    return Dataset(table, info=dataset.info.copy())


def column(dataset: Dataset, name: str) -> np.ndarray:
    return np.asarray(dataset.data.table.column(name).to_numpy())


def save_both(dataset: Dataset, info: dict, folder: Path) -> list[Path]:
    """The two on-disk formats ``save_score_dataset`` writes: the folder and the Parquet file."""
    save_score_dataset(dataset, folder, info)
    return [folder, folder / "scores.parquet"]


@pytest.mark.parametrize("name", ["w0", "g0", "surviving_score", "input_std"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_refused_naming_source_and_column(clean, tmp_path: Path, name: str, bad: float) -> None:
    dataset, info = clean
    values = column(dataset, name).copy()
    values[17] = bad
    for source in save_both(with_column(dataset, name, values), info, tmp_path):
        with pytest.raises(ValueError, match=rf"{source}.*column '{name}'.*1 non-finite.*row 17"):
            load_score_dataset(source)


def test_inverted_surviving_scores_are_refused(clean, tmp_path: Path) -> None:
    dataset, info = clean
    inverted = (1.0 - column(dataset, "surviving_score")).astype(np.float32)
    for source in save_both(with_column(dataset, "surviving_score", inverted), info, tmp_path):
        with pytest.raises(ValueError, match=rf"{source}.*column 'surviving_score'.*\(cycle_pruned - 1\) / cycles"):
            load_score_dataset(source)


def test_a_surviving_score_off_by_more_than_float32_rounding_is_refused(clean, tmp_path: Path) -> None:
    dataset, info = clean
    scores = column(dataset, "surviving_score").copy()
    scores[5] = np.nextafter(scores[5], np.float32(2))  # one float32 ulp: rounding, accepted
    save_score_dataset(with_column(dataset, "surviving_score", scores), tmp_path / "ulp", info)
    assert len(load_score_dataset(tmp_path / "ulp")) == len(dataset)
    scores[5] += 1e-3
    save_score_dataset(with_column(dataset, "surviving_score", scores), tmp_path / "off", info)
    with pytest.raises(ValueError, match=r"column 'surviving_score'.*1 row.*row 5"):
        load_score_dataset(tmp_path / "off")


def test_survived_must_match_cycle_pruned(clean, tmp_path: Path) -> None:
    dataset, info = clean
    survived = ~column(dataset, "survived")
    save_score_dataset(with_column(dataset, "survived", survived), tmp_path, info)
    with pytest.raises(ValueError, match=r"column 'survived'.*cycle_pruned == cycles \+ 1"):
        load_score_dataset(tmp_path)


@pytest.mark.parametrize("level", [0, -3, CYCLES + 2])
def test_cycle_pruned_outside_its_range_is_refused(clean, tmp_path: Path, level: int) -> None:
    dataset, info = clean
    pruned = column(dataset, "cycle_pruned").copy()
    pruned[3] = level
    # The other targets follow the bad level, so only the range can tell.
    bad = with_column(dataset, "cycle_pruned", pruned)
    bad = with_column(bad, "surviving_score", ((pruned - 1) / CYCLES).astype(np.float32))
    bad = with_column(bad, "survived", pruned == CYCLES + 1)
    save_score_dataset(bad, tmp_path, info)
    with pytest.raises(ValueError, match=rf"column 'cycle_pruned'.*\[1, cycles \+ 1\].*row 3.*{level}"):
        load_score_dataset(tmp_path)


def test_cycles_below_one_is_refused(clean) -> None:
    from autosparse_hf.records.score_dataset import validate_score_table

    dataset, _ = clean
    bad = with_column(dataset, "cycles", np.zeros(len(dataset), dtype=np.int16))
    with pytest.raises(ValueError, match=r"in memory.*column 'cycles'"):
        validate_score_table(bad.data.table, "in memory")


def test_missing_values_are_refused(clean, tmp_path: Path) -> None:
    dataset, info = clean
    table = dataset.data.table
    i = table.column_names.index("g0")
    values = column(dataset, "g0").tolist()
    values[9] = None
    table = table.set_column(i, "g0", pa.array(values, type=pa.float32()))
    save_score_dataset(Dataset(table, info=dataset.info.copy()), tmp_path, info)
    with pytest.raises(ValueError, match=r"column 'g0'.*1 missing"):
        load_score_dataset(tmp_path)


def test_parquet_records_and_checks_the_schema_version(clean, tmp_path: Path) -> None:
    dataset, info = clean
    save_score_dataset(dataset, tmp_path, info)
    parquet = tmp_path / "scores.parquet"
    loaded = load_score_dataset(parquet)
    # The whole description travels in the Parquet file: version, identity, config (feature_num_batches), layers.
    assert score_schema_version(loaded) == SCORE_SCHEMA_VERSION
    assert json.loads(loaded.info.description) == json.loads(dataset.info.description)
    table = pq.read_table(parquet)
    description = json.loads(table.schema.metadata[b"autosparse_score_dataset"])
    description["autosparse_score_schema"] = 99
    metadata = {**table.schema.metadata, b"autosparse_score_dataset": json.dumps(description).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), tmp_path / "future.parquet")
    with pytest.raises(ValueError, match=r"future\.parquet has score schema version 99"):
        load_score_dataset(tmp_path / "future.parquet")


def test_parquet_without_a_version_is_read_only_as_the_unversioned_schema(clean, tmp_path: Path) -> None:
    """Files written before the version was recorded (``Dataset.to_parquet``) are version 2 with these exact types;
    anything else without a version is refused rather than guessed."""
    dataset, _ = clean
    dataset.to_parquet(str(tmp_path / "old.parquet"))
    assert b"autosparse_score_dataset" not in pq.read_schema(tmp_path / "old.parquet").metadata
    assert SCORE_SCHEMA_VERSION == 2, "unversioned files are version 2: refuse them once the schema moves on"
    assert len(load_score_dataset(tmp_path / "old.parquet")) == len(dataset)
    # Same columns, other types (e.g. exported through pandas): nothing says which schema it follows.
    retyped = dataset.data.table.set_column(
        dataset.data.table.column_names.index("w0"), "w0", dataset.data.table.column("w0").cast(pa.float64())
    )
    pq.write_table(retyped.replace_schema_metadata(None), tmp_path / "foreign.parquet")
    with pytest.raises(ValueError, match=r"foreign\.parquet records no score schema version.*w0"):
        load_score_dataset(tmp_path / "foreign.parquet")


def test_folder_without_a_version_and_other_types_is_refused(clean, tmp_path: Path) -> None:
    dataset, _ = clean
    table = dataset.data.table
    retyped = table.set_column(table.column_names.index("seed"), "seed", table.column("seed").cast(pa.int32()))
    Dataset(retyped).save_to_disk(str(tmp_path / "foreign"))
    with pytest.raises(ValueError, match=r"foreign records no score schema version.*seed"):
        load_score_dataset(tmp_path / "foreign")


def test_merging_writes_nothing_into_the_source_folders(clean, tmp_path: Path) -> None:
    dataset, info = clean
    save_score_dataset(dataset, tmp_path / "a", info)
    save_score_dataset(dataset, tmp_path / "b", info)
    before = {p: sorted(x.name for x in p.rglob("*")) for p in (tmp_path / "a", tmp_path / "b")}
    merged = load_score_datasets([tmp_path / "a", tmp_path / "b" / "scores.parquet"])
    assert len(merged) == 2 * len(dataset) and merged.features == SCORE_FEATURES
    after = {p: sorted(x.name for x in p.rglob("*")) for p in (tmp_path / "a", tmp_path / "b")}
    assert after == before


def test_validation_is_vectorized(clean) -> None:
    """Two million rows in a few seconds: no Python loop per row."""
    from autosparse_hf.records.score_dataset import validate_score_table

    dataset, _ = clean
    table = dataset.data.table
    repeats = 2_000_000 // len(dataset) + 1
    big = pa.concat_tables([table] * repeats)
    start = time.perf_counter()
    validate_score_table(big, "big")
    assert time.perf_counter() - start < 10.0


def ticket_source(**changes: object):  # noqa: ANN201
    from autosparse_hf.records import IRPTicketSource

    generator = torch.Generator().manual_seed(0)
    fields = {
        "cycle_pruned": {"a": torch.randint(1, 4, (4, 5), generator=generator, dtype=torch.int16)},
        "w0": {"a": torch.randn(4, 5, generator=generator)},
        "shapes": {"a": (4, 5)},
        "cycles": 2,
        "origin": "somewhere/run",
    }
    fields.update(changes)
    return IRPTicketSource(**fields)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_ticket_source_with_non_finite_w0_is_refused(bad: float) -> None:
    """A run folder's record (not a score dataset) builds the ticket source directly: it checks itself."""
    w0 = torch.randn(4, 5)
    w0[1, 2] = bad
    with pytest.raises(ValueError, match=r"somewhere/run.*w0\['a'\].*1 non-finite"):
        ticket_source(w0={"a": w0})


def test_a_ticket_source_with_levels_out_of_range_or_missing_w0_is_refused() -> None:
    levels = torch.ones(4, 5, dtype=torch.int16)
    levels[0, 0] = 4  # cycles + 2
    with pytest.raises(ValueError, match=r"somewhere/run.*cycle_pruned\['a'\].*\[1, 3\]"):
        ticket_source(cycle_pruned={"a": levels})
    with pytest.raises(ValueError, match=r"somewhere/run.*w0.*'a'"):
        ticket_source(w0={"b": torch.randn(4, 5)})
    with pytest.raises(ValueError, match=r"somewhere/run.*w0\['a'\].*19.*20"):
        ticket_source(w0={"a": torch.randn(19)})
    assert ticket_source().numel == 20


def test_a_merged_dataset_checks_the_version_of_every_source(clean, tmp_path: Path) -> None:
    """``concatenate_datasets`` joins the descriptions: each source's version is read, not none of them."""
    from datasets import concatenate_datasets

    dataset, _ = clean
    future = Dataset(dataset.data.table, info=dataset.info.copy())
    future.info.description = json.dumps({**json.loads(dataset.info.description), "autosparse_score_schema": 99})
    concatenate_datasets([dataset, dataset]).save_to_disk(str(tmp_path / "same"))
    assert score_schema_version(load_score_dataset(tmp_path / "same")) == SCORE_SCHEMA_VERSION
    concatenate_datasets([dataset, future]).save_to_disk(str(tmp_path / "mixed"))
    with pytest.raises(ValueError, match=r"mixed has score schema version 99"):
        load_score_dataset(tmp_path / "mixed")
