"""The surviving-score dataset (``autosparse_hf.records``) and the initial features it stores
(``autosparse_hf.features``): schema, values, folder layout, card, load/merge/push, scale."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset
from irp_utils import (
    BATCH,
    digits,
    lenet,
    run_irp,
)
from torch.utils.data import DataLoader

from autosparse_hf import (
    IRPConfig,
    build_score_dataset,
    build_score_dataset_from_run,
    compute_initial_features,
    get_prunable_parameters,
    load_score_dataset,
    load_score_datasets,
    push_score_dataset,
)
from autosparse_hf.features import InitialFeatures, LayerContext
from autosparse_hf.irp.callback import RUN_DIR
from autosparse_hf.records import SCORE_FEATURES, SCORE_SCHEMA_VERSION, score_schema_version

CONFIG = IRPConfig(cycles=3, final_sparsity=0.9, feature_num_batches=2)


def columns(ds: Dataset) -> dict[str, np.ndarray]:
    return ds.with_format("numpy")[:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):  # noqa: ANN001, ANN201
    """Two IRP runs of LeNet-300-100 on digits with different seeds (initialization and training)."""
    out = {}
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"scores-seed{seed}")
        trainer, irp = run_irp(folder, CONFIG, model=lenet(seed=seed), irp_kwargs={"seed": seed}, seed=seed)
        out[seed] = {"folder": folder, "run": folder / RUN_DIR, "irp": irp, "ds": irp.to_dataset()}
    return out


def test_one_row_per_prunable_weight_with_the_explicit_schema(runs) -> None:  # noqa: ANN001
    irp, ds = runs[0]["irp"], runs[0]["ds"]
    params = get_prunable_parameters(lenet())
    assert list(params) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert len(ds) == sum(p.param.numel() for p in params.values()) == irp.total
    assert ds.features == SCORE_FEATURES
    assert ds.column_names == list(SCORE_FEATURES)
    assert score_schema_version(ds) == SCORE_SCHEMA_VERSION
    assert score_schema_version(Dataset.from_dict({"a": [1]})) is None
    col = columns(ds)
    start = 0
    for depth, (name, p) in enumerate(params.items()):
        n = p.param.numel()
        rows = slice(start, start + n)
        assert set(col["param_name"][rows]) == {name}
        assert np.array_equal(col["index"][rows], np.arange(n))
        assert set(col["fan_in"][rows]) == {p.fan_in} and set(col["fan_out"][rows]) == {p.fan_out}
        assert set(col["numel"][rows]) == {n} and set(col["layer_kind"][rows]) == {"linear"}
        assert set(col["relative_depth"][rows]) == {depth / 2}
        start += n
    assert start == len(ds)
    assert set(col["run_id"]) == {irp.identity["run_id"]} and set(col["model"]) == {"lenet300100"}
    assert set(col["task"]) == {"digits"} and set(col["seed"]) == {0}


def test_features_stored_equal_features_computed_for_the_model_at_init(runs) -> None:  # noqa: ANN001
    col = columns(runs[0]["ds"])
    model = lenet(seed=0)
    # The IRP run took g0 from the first feature_num_batches batches of the Trainer's (sequential) train loader.
    loader = DataLoader(digits()["train"], batch_size=BATCH)
    features = compute_initial_features(model, loader, CONFIG.feature_num_batches)
    assert features.num_batches == 2
    w0 = np.concatenate([features.weights[n].reshape(-1).numpy() for n in features.names])
    g0 = np.concatenate([features.gradients[n].reshape(-1).numpy() for n in features.names])
    init = np.concatenate([p.detach().reshape(-1).numpy() for n, p in model.named_parameters() if n.endswith("weight")])
    assert np.array_equal(col["w0"], init)
    assert np.array_equal(col["w0"], w0)
    np.testing.assert_allclose(col["g0"], g0, rtol=1e-6, atol=1e-9)
    assert np.abs(g0).max() > 0
    # Averaged, not summed: one batch repeated twice gives the one-batch gradient.
    batch = next(iter(loader))
    once = compute_initial_features(model, [batch], 1).gradients
    twice = compute_initial_features(model, [batch, batch], 2).gradients
    for name in once:
        torch.testing.assert_close(once[name], twice[name])


def test_compute_initial_features_leaves_model_and_rng_untouched() -> None:
    model = lenet(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    loader = DataLoader(digits()["train"], batch_size=BATCH, shuffle=True)  # drawing from it uses the torch RNG
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    compute_initial_features(model, loader, 2)
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1] and np.array_equal(np.random.get_state()[1], rng[2])
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_targets(runs) -> None:  # noqa: ANN001
    irp, ds = runs[0]["irp"], runs[0]["ds"]
    col = columns(ds)
    cycles = CONFIG.cycles
    assert set(col["cycles"]) == {cycles}
    expected = np.concatenate([irp.cycle_pruned[n].reshape(-1).numpy() for n in irp.features.names])
    assert np.array_equal(col["cycle_pruned"], expected)
    assert np.array_equal(col["surviving_score"], ((col["cycle_pruned"] - 1) / cycles).astype(np.float32))
    assert np.array_equal(col["survived"], col["cycle_pruned"] == cycles + 1)
    assert int(col["survived"].sum()) == irp.counts[-1]
    # Scores take exactly the values c / E.
    assert set(np.round(col["surviving_score"] * cycles, 4)) <= {0.0, 1.0, 2.0, 3.0}


def test_rebuilding_from_the_run_folder_equals_to_dataset(runs, tmp_path: Path) -> None:  # noqa: ANN001
    rebuilt = build_score_dataset_from_run(runs[0]["run"])
    assert rebuilt.data.table.equals(runs[0]["ds"].data.table)
    assert json.loads(rebuilt.info.description) == json.loads(runs[0]["ds"].info.description)
    with pytest.raises(FileNotFoundError, match="irp_run.json"):
        build_score_dataset_from_run(tmp_path)


def test_saved_folder_layout_and_loading(runs) -> None:  # noqa: ANN001
    run, ds = runs[0]["run"], runs[0]["ds"]
    for source in (run, run / "scores"):
        loaded = load_score_dataset(source)
        assert loaded.cache_files, "save_to_disk datasets load memory-mapped"
        assert loaded.features == SCORE_FEATURES
        assert loaded.data.table.equals(ds.data.table)
        assert score_schema_version(loaded) == SCORE_SCHEMA_VERSION
    parquet = load_score_dataset(run / "scores.parquet")
    assert parquet.features == SCORE_FEATURES
    assert parquet.data.table.equals(ds.data.table)


def test_dataset_card(runs) -> None:  # noqa: ANN001
    irp = runs[0]["irp"]
    text = (runs[0]["run"] / "scores" / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert "autosparse" in header["tags"] and header["autosparse_score_schema"] == SCORE_SCHEMA_VERSION
    assert header["size_categories"] == ["10K<n<100K"]  # 50,200 rows, a Hub size category
    assert "| cycles | 3 |" in text and "| final_sparsity | 0.9 |" in text
    assert irp.identity["run_id"] in text and "arXiv 2408.14757" in text
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    header_line = next(line for line in text.splitlines() if line.startswith("| cycle | density"))
    names = cells(header_line)
    assert names[:3] == ["cycle", "density", "sparsity"] and "accuracy" in names
    table = [line for line in text.splitlines() if line.startswith("| ") and cells(line)[0].isdigit()]
    assert len(table) == CONFIG.training_cycles
    for line, row in zip(table, irp.history, strict=True):
        values = dict(zip(names, cells(line), strict=True))
        assert int(values["cycle"]) == row["cycle"]
        assert float(values["density"]) == pytest.approx(row["density"], abs=1e-4)
        assert float(values["accuracy"]) == pytest.approx(row["eval_accuracy"], abs=1e-4)
    md = (runs[0]["run"] / "cycles.md").read_text()
    assert md.splitlines()[0].startswith("| cycle | density | sparsity |")
    # The training recipe of the cycles and a loading snippet are part of the card.
    assert "| learning_rate |" in text and "| world_size | 1 |" in text and "| per_device_train_batch_size |" in text
    assert "load_score_dataset(" in text


def test_two_runs_load_and_concatenate(runs) -> None:  # noqa: ANN001
    both = load_score_datasets([runs[0]["run"], runs[1]["run"] / "scores.parquet"])
    assert len(both) == len(runs[0]["ds"]) + len(runs[1]["ds"])
    assert both.features == SCORE_FEATURES
    col = columns(both)
    ids = {runs[0]["irp"].identity["run_id"], runs[1]["irp"].identity["run_id"]}
    assert len(ids) == 2 and set(col["run_id"]) == ids
    assert set(col["seed"]) == {0, 1}
    # Different seeds, different initial weights.
    assert not np.array_equal(columns(runs[0]["ds"])["w0"], columns(runs[1]["ds"])["w0"])
    with pytest.raises(ValueError, match="no score datasets"):
        load_score_datasets([])


def test_not_a_score_dataset_is_refused(tmp_path: Path) -> None:
    partial = Dataset.from_dict({"w0": [0.1, 0.2], "g0": [0.0, 1.0]})
    partial.save_to_disk(str(tmp_path / "partial"))
    with pytest.raises(ValueError, match=r"missing columns \[.*'run_id'.*'surviving_score'"):
        load_score_dataset(tmp_path / "partial")
    partial.to_parquet(str(tmp_path / "partial.parquet"))
    with pytest.raises(ValueError, match="missing columns"):
        load_score_dataset(tmp_path / "partial.parquet")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a score dataset folder nor a .parquet file"):
        load_score_dataset(tmp_path / "notes.txt")


def test_other_schema_version_is_refused(runs, tmp_path: Path) -> None:  # noqa: ANN001
    ds = runs[0]["ds"]
    future = Dataset(ds.data.table, info=ds.info.copy())
    future.info.description = json.dumps({**json.loads(ds.info.description), "autosparse_score_schema": 99})
    future.save_to_disk(str(tmp_path / "future"))
    with pytest.raises(ValueError, match="schema version 99"):
        load_score_dataset(tmp_path / "future")


def test_hub_ids_and_pushing_fail_fast_offline(runs) -> None:  # noqa: ANN001
    run = runs[0]["run"]
    before = load_score_dataset(run)
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="offline"):
        push_score_dataset(before, "someone/irp-scores")
    with pytest.raises(ConnectionError, match="offline"):
        load_score_dataset("someone/irp-scores")
    assert time.perf_counter() - start < 2.0
    after = load_score_dataset(run)
    assert after.data.table.equals(before.data.table)


def test_builder_scales_without_a_python_loop_per_weight() -> None:
    shapes = {"conv.weight": (512, 256, 3, 3), "fc.weight": (1000, 820)}  # 1,179,648 + 820,000 = ~2.0M weights
    generator = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(s, generator=generator) for n, s in shapes.items()}
    gradients = {n: torch.randn(s, generator=generator) for n, s in shapes.items()}
    layers = [
        LayerContext("conv.weight", "conv", 256 * 9, 512 * 9, 0, 0.0, 512 * 256 * 9, shapes["conv.weight"]),
        LayerContext("fc.weight", "linear", 820, 1000, 1, 1.0, 820_000, shapes["fc.weight"]),
    ]
    features = InitialFeatures(weights=weights, gradients=gradients, layers=layers, num_batches=4)
    cycles = 20
    record = {n: torch.randint(1, cycles + 2, s, generator=generator, dtype=torch.int16) for n, s in shapes.items()}
    info = {"config": {"cycles": cycles}, "identity": {"run_id": "synthetic", "model": "m", "task": "t", "seed": 3}}
    start = time.perf_counter()
    ds = build_score_dataset(features, record, info)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"building {len(ds)} rows took {elapsed:.1f}s"
    assert len(ds) == 1_179_648 + 820_000
    assert ds.features == SCORE_FEATURES
    row = 1_179_648 + 12_345
    assert ds[row]["param_name"] == "fc.weight" and ds[row]["index"] == 12_345
    assert ds[row]["w0"] == pytest.approx(float(weights["fc.weight"].reshape(-1)[12_345]))
    assert ds[row]["cycle_pruned"] == int(record["fc.weight"].reshape(-1)[12_345])
    assert ds[5]["layer_kind"] == "conv" and ds[5]["fan_in"] == 256 * 9
    bad = {n: torch.zeros(s, dtype=torch.int16) for n, s in shapes.items()}
    with pytest.raises(ValueError, match="cycle_pruned values must lie in"):
        build_score_dataset(features, bad, info)


def test_string_columns_are_chunked_below_arrows_two_gib_offset_limit(monkeypatch, tmp_path) -> None:
    # GPT-2 small's 85M parameter names (about 2.5 GB of characters) overflowed one Arrow string chunk; a small chunk
    # size here shows the split without building 85M rows, and that rows, saving and loading are unchanged.
    from autosparse_hf.records import score_dataset as module

    shapes = {"first.weight": (30, 20), "second.weight": (10, 30)}
    generator = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(s, generator=generator) for n, s in shapes.items()}
    layers = [
        LayerContext("first.weight", "linear", 20, 30, 0, 0.0, 600, shapes["first.weight"]),
        LayerContext("second.weight", "linear", 30, 10, 1, 1.0, 300, shapes["second.weight"]),
    ]
    features = InitialFeatures(weights=weights, gradients=weights, layers=layers, num_batches=1)
    record = {n: torch.randint(1, 4, s, generator=generator, dtype=torch.int16) for n, s in shapes.items()}
    info = {"config": {"cycles": 2}, "identity": {"run_id": "chunks", "model": "m", "task": "t", "seed": 0}}
    whole = build_score_dataset(features, record, info)
    monkeypatch.setattr(module, "STRING_CHUNK_BYTES", 13 * 100)  # 100 names of 13 characters per chunk
    chunked = build_score_dataset(features, record, info)
    assert chunked.data.table.column("param_name").num_chunks == 9
    assert whole.data.table.column("param_name").num_chunks == 1
    assert chunked["param_name"] == whole["param_name"] == ["first.weight"] * 600 + ["second.weight"] * 300
    chunked.save_to_disk(str(tmp_path / "scores"))
    assert Dataset.load_from_disk(str(tmp_path / "scores"))["param_name"] == whole["param_name"]
