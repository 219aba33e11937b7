"""The AutoS predictor (``autosparse_hf.predictor``): config and model, loading, features, splits, losses, learning."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from autos_utils import (
    CYCLES,
    FEATURE_NUM_BATCHES,
    NUM_WEIGHTS,
    save_synthetic_run,
    synthetic_run,
)
from safetensors.torch import load_file, save_file
from torch import nn

from autosparse_hf import FEATURE_SCHEMA_VERSION, LayerContext, compute_initial_features
from autosparse_hf.features import FEATURE_SETS, feature_names, layer_feature_matrix, unit_indices
from autosparse_hf.predictor import ARCHITECTURES, AutoSConfig, AutoSModel, load_predictor
from autosparse_hf.predictor.data import score_table, split_rows
from autosparse_hf.predictor.losses import pairwise_ranking_loss
from autosparse_hf.predictor.training import (
    AutoSTrainingArguments,
    ChunkDataset,
    _feature_num_batches,
    survival_examples,
    train_autos,
)
from autosparse_hf.records import load_score_dataset, load_score_datasets, save_score_dataset

# ---------------------------------------------------------------------------------------------- config and model


def _model_with_statistics(architecture: str, seed: int = 0) -> AutoSModel:
    torch.manual_seed(seed)
    model = AutoSModel(AutoSConfig(architecture=architecture))
    f = model.config.num_features
    model.set_feature_statistics(torch.linspace(-1.0, 2.0, f), torch.linspace(0.5, 3.0, f))
    return model


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_architectures_score_rows_and_round_trip(architecture, tmp_path):
    model = _model_with_statistics(architecture)
    rows = 4 if architecture == "paper_resnet18" else 64
    features = torch.randn(rows, model.config.num_features, generator=torch.Generator().manual_seed(1)) * 3 + 1
    before = model.predict(features)
    assert before.shape == (rows,) and torch.isfinite(before).all()
    assert before.unique().numel() > 1  # one score per row, not a broadcast constant

    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "autos"
    assert config["architecture"] == architecture
    assert config["feature_set"] == "default"
    assert config["feature_schema_version"] == FEATURE_SCHEMA_VERSION
    assert config["feature_mean"] == pytest.approx(torch.linspace(-1.0, 2.0, model.config.num_features).tolist())

    for loaded in (AutoSModel.from_pretrained(tmp_path), transformers.AutoModel.from_pretrained(tmp_path)):
        assert type(loaded) is AutoSModel
        assert torch.equal(loaded.feature_mean, model.feature_mean)
        assert torch.equal(loaded.feature_std, model.feature_std)
        assert torch.equal(loaded.predict(features), before)


def test_standardization_is_applied_and_saved(tmp_path):
    model = _model_with_statistics("mlp")
    f = model.config.num_features
    x = torch.randn(32, f)
    # Shifting the features by the mean and scaling by the std is exactly undone by the stored standardization.
    plain = AutoSModel(AutoSConfig())
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("feature_")}, strict=False)
    assert torch.allclose(model.predict(x * model.feature_std + model.feature_mean), plain.predict(x), atol=1e-5)
    # A zero std (a constant feature such as is_conv in an MLP) becomes 1, never a division by zero.
    std = torch.ones(f)
    std[3] = 0.0
    model.set_feature_statistics(torch.zeros(f), std)
    assert model.feature_std[3] == 1.0 and model.config.feature_std[3] == 1.0
    model.set_feature_statistics(torch.full((f,), 0.25), torch.full((f,), 2.0))
    model.save_pretrained(tmp_path)
    reloaded = load_predictor(tmp_path)
    assert reloaded.config.feature_mean == [0.25] * f
    assert torch.equal(reloaded.predict(x), model.predict(x))


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [
        ({"architecture": "transformer"}, "transformer"),
        ({"loss": "hinge"}, "hinge"),
        ({"feature_set": "pixels"}, "pixels"),
    ],
)
def test_config_rejects_unknown_values(kwargs, value):
    with pytest.raises(ValueError, match=value):
        AutoSConfig(**kwargs)


def test_config_records_feature_set_width():
    for name, columns in FEATURE_SETS.items():
        config = AutoSConfig(feature_set=name)
        assert config.num_features == len(columns)
        assert AutoSModel(config).predict(torch.zeros(3, len(columns))).shape == (3,)
    with pytest.raises(ValueError, match="2 values"):
        AutoSConfig(feature_set="paper", feature_mean=[0.0] * 3)


# ------------------------------------------------------------------------------------------------------- loading


@pytest.fixture
def saved_predictor(tmp_path) -> Path:
    folder = tmp_path / "predictor"
    _model_with_statistics("mlp").save_pretrained(folder)
    return folder


def test_load_predictor_accepts_folder_and_instance(saved_predictor):
    model = AutoSModel.from_pretrained(saved_predictor)
    model.train()
    x = torch.randn(8, model.config.num_features)
    assert load_predictor(model) is model and not model.training
    assert torch.equal(load_predictor(str(saved_predictor)).predict(x), model.predict(x))


def test_load_predictor_rejects_other_schema_version(saved_predictor):
    config = json.loads((saved_predictor / "config.json").read_text())
    config["feature_schema_version"] = FEATURE_SCHEMA_VERSION + 41
    (saved_predictor / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"version {FEATURE_SCHEMA_VERSION + 41}.*version {FEATURE_SCHEMA_VERSION}"):
        load_predictor(saved_predictor)
    # An instance carrying another version is refused as well.
    model = AutoSModel(AutoSConfig())
    model.config.feature_schema_version = FEATURE_SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="feature schema version"):
        load_predictor(model)


def test_load_predictor_missing_files(saved_predictor, tmp_path):
    (saved_predictor / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_predictor(saved_predictor)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_predictor(empty)


def test_load_predictor_never_reads_pickle(saved_predictor):
    state = load_file(saved_predictor / "model.safetensors")
    (saved_predictor / "model.safetensors").unlink()
    torch.save(state, saved_predictor / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_predictor(saved_predictor)


def test_load_predictor_corrupt_weights(saved_predictor):
    (saved_predictor / "model.safetensors").write_bytes(b"\x07garbage, not safetensors" * 40)
    with pytest.raises((ValueError, OSError), match=str(saved_predictor)):
        load_predictor(saved_predictor)


def test_load_predictor_incomplete_weights(saved_predictor):
    """transformers would re-initialize a missing tensor at random and only warn; pruning must not use that."""
    state = load_file(saved_predictor / "model.safetensors")
    del state["net.0.weight"]
    save_file(state, saved_predictor / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="net.0.weight"):
        load_predictor(saved_predictor)


def test_load_predictor_other_model_type(saved_predictor):
    config = json.loads((saved_predictor / "config.json").read_text())
    config["model_type"] = "bert"
    (saved_predictor / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="bert"):
        load_predictor(saved_predictor)


def test_load_predictor_hub_id_offline_fails_fast(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="no-such-user/no-such-autos"):
        load_predictor("no-such-user/no-such-autos")
    assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------------------------------------------------ features


def test_layer_feature_matrix_known_values():
    w0 = torch.tensor([[3.0, -1.0], [-4.0, 2.0]])
    g0 = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    layer = LayerContext(
        name="conv.weight", kind="conv", fan_in=6, fan_out=5, depth=1, relative_depth=0.5, numel=4, shape=(2, 2)
    )
    matrix = layer_feature_matrix(w0, g0, layer, "normalized")
    assert matrix.shape == (4, len(feature_names("normalized")))
    col = dict(zip(feature_names("normalized"), matrix.T, strict=True))
    std = math.sqrt(7.5)  # population std of (3, -1, -4, 2), mean 0
    expected = {
        "w0_over_std": [3 / std, -1 / std, -4 / std, 2 / std],
        "abs_w0_over_std": [3 / std, 1 / std, 4 / std, 2 / std],
        "g0_over_mean_abs": [1.0, -2.0, 0.5, 0.5],  # mean |g0| = 1
        "abs_g0_over_mean_abs": [1.0, 2.0, 0.5, 0.5],
        "abs_w0g0_over_mean": [1.5, 1.0, 1.0, 0.5],  # |w0 g0| = (3, 2, 2, 1), mean 2
        "rank_abs_w0": [2 / 3, 0.0, 1.0, 1 / 3],
        "rank_abs_w0g0": [1.0, 1 / 3, 2 / 3, 0.0],  # the tie (2, 2) is broken by position
        "log_fan_in": [math.log(6)] * 4,
        "log_fan_out": [math.log(5)] * 4,
        "relative_depth": [0.5] * 4,
        "is_conv": [1.0] * 4,
        "log_numel": [math.log(4)] * 4,
    }
    assert set(expected) == set(col)
    for name, values in expected.items():
        assert col[name].tolist() == pytest.approx(values, abs=1e-6), name
    assert ((col["rank_abs_w0"] >= 0) & (col["rank_abs_w0"] <= 1)).all()
    assert layer_feature_matrix(w0, g0, layer, "paper").tolist() == [[3, 1], [-1, -2], [-4, 0.5], [2, 0.5]]
    assert layer_feature_matrix(w0, g0, layer, "weight").tolist() == [[3], [-1], [-4], [2]]
    linear = LayerContext(**{**layer.to_dict(), "kind": "linear"})
    assert layer_feature_matrix(w0, g0, linear, "normalized")[:, feature_names("normalized").index("is_conv")].eq(0).all()


def test_unit_features_known_values():
    """Weight (out=2, in=2): unit_in = column, unit_out = row; norms of g0 per column / row, relative to the mean."""
    w0 = torch.tensor([[3.0, -1.0], [-4.0, 2.0]])
    g0 = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    layer = LayerContext(
        name="fc.weight", kind="linear", fan_in=2, fan_out=2, depth=0, relative_depth=0.0, numel=4, shape=(2, 2)
    )
    unit_in, unit_out = unit_indices(layer)
    assert unit_in.tolist() == [0, 1, 0, 1] and unit_out.tolist() == [0, 0, 1, 1]
    units = {"unit_in": unit_in, "unit_out": unit_out, "input_std": torch.tensor([1.0, 3.0, 1.0, 3.0])}
    matrix = layer_feature_matrix(w0, g0, layer, "default", units)
    col = dict(zip(feature_names("default"), matrix.T, strict=True))
    assert col["input_std_rel"].tolist() == pytest.approx([0.5, 1.5, 0.5, 1.5])
    cols = [math.sqrt(1.25), math.sqrt(4.25)]  # columns (1, 0.5) and (-2, 0.5)
    rows = [math.sqrt(5.0), math.sqrt(0.5)]  # rows (1, -2) and (0.5, 0.5)
    assert col["in_grad_norm_rel"].tolist() == pytest.approx([c / (sum(cols) / 2) for c in cols * 2])
    assert col["out_grad_norm_rel"].tolist() == pytest.approx(
        [r / (sum(rows) / 2) for r in (rows[0], rows[0], rows[1], rows[1])]
    )
    with pytest.raises(ValueError, match="unit columns"):
        layer_feature_matrix(w0, g0, layer, "default")


def test_unit_indices_for_convolutions_and_transposed_weights():
    conv = LayerContext(name="c", kind="conv", fan_in=12, fan_out=2, depth=0, relative_depth=0.0, numel=24,
                        shape=(2, 3, 2, 2))
    unit_in, unit_out = unit_indices(conv)
    weight = torch.arange(24).reshape(2, 3, 2, 2)
    for flat in range(24):
        o, i = [int(v) for v in (weight == flat).nonzero()[0][:2]]
        assert (unit_in[flat], unit_out[flat]) == (i, o)
    gpt2 = LayerContext(name="t", kind="linear", fan_in=3, fan_out=2, depth=0, relative_depth=0.0, numel=6,
                        shape=(3, 2), transposed=True)
    unit_in, unit_out = unit_indices(gpt2)
    assert unit_in.tolist() == [0, 0, 1, 1, 2, 2] and unit_out.tolist() == [0, 1, 0, 1, 0, 1]


def test_input_std_is_the_spread_of_each_input_unit_over_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(32, 3) * torch.tensor([0.1, 1.0, 5.0])
    batches = [{"pixel_values": x[:16], "labels": torch.zeros(16, dtype=torch.long)},
               {"pixel_values": x[16:], "labels": torch.ones(16, dtype=torch.long)}]
    features = compute_initial_features(model, batches, 2)
    assert features.input_std["0.weight"].tolist() == pytest.approx(x.std(0, unbiased=False).tolist(), rel=1e-4)
    hidden = torch.relu(model[0](x)).detach()
    assert features.input_std["2.weight"].tolist() == pytest.approx(hidden.std(0, unbiased=False).tolist(), rel=1e-4)


def test_score_table_features_equal_prune_time_features(tmp_path):
    """Training rows (score dataset -> disk -> score_table) get exactly the prune-time features of the same model."""
    model, batches, features, dataset, info = synthetic_run(seed=3)
    # The same model and batches, computed again as AutoS would at prune time.
    again = type(model)()
    again.load_state_dict(model.state_dict())
    prune_time = compute_initial_features(again, batches, FEATURE_NUM_BATCHES)
    save_score_dataset(dataset, tmp_path, info)
    loaded = load_score_dataset(tmp_path).shuffle(seed=0)  # row order must not matter
    for feature_set in ("default", "paper"):
        table = score_table(loaded, feature_set)
        assert len(table) == NUM_WEIGHTS
        for layer in prune_time.layers:
            expected = layer_feature_matrix(
                prune_time.weights[layer.name],
                prune_time.gradients[layer.name],
                layer,
                feature_set,
                prune_time.unit_columns(layer.name),
            )
            rows = np.nonzero(table.param_name == layer.name)[0]
            index = np.asarray(loaded.select(rows)["index"])  # position of each row inside the tensor
            assert torch.equal(table.features[torch.from_numpy(rows)], expected[torch.from_numpy(index)]), layer.name
    # The raw columns are the same tensors as well (w0, g0 of this init, averaged over the same batches).
    assert table.w0.size == NUM_WEIGHTS and np.isfinite(table.g0).all()


def test_score_table_rejects_duplicated_or_partial_tensors(tmp_path):
    save_synthetic_run(tmp_path / "a", seed=0)
    twice = load_score_datasets([tmp_path / "a", tmp_path / "a" / "scores.parquet"])
    with pytest.raises(ValueError, match="exactly once"):
        score_table(twice, "default")
    partial = load_score_dataset(tmp_path / "a").select(range(100, 4000))
    with pytest.raises(ValueError, match="exactly once"):
        score_table(partial, "default")


def test_score_table_targets_and_densities():
    _, _, _, dataset, _ = synthetic_run(seed=0)
    table = score_table(dataset, "default")
    assert np.allclose(table.surviving_score, (table.cycle_pruned - 1) / CYCLES)
    dens = table.densities["run-seed0"]
    assert len(dens) == CYCLES + 1 and dens[0] == 1.0 and all(a > b for a, b in zip(dens[:-1], dens[1:], strict=True))
    survivors = table.survivors_at(dens[3])
    assert survivors.sum() == (table.cycle_pruned > 3).sum()


# --------------------------------------------------------------------------------------------------------- split


@pytest.fixture(scope="module")
def two_run_table():
    from datasets import concatenate_datasets

    return score_table(concatenate_datasets([synthetic_run(0)[3], synthetic_run(1)[3]]), "default")


def _groups(table, rows):
    return {(table.run_id[r], table.param_name[r]) for r in rows}


@pytest.mark.parametrize(
    ("split", "kwargs"),
    [
        ("layers", {}),
        ("layers", {"eval_layers": ["fc1.weight", "fc3.weight"]}),
        ("runs", {}),
        ("runs", {"eval_runs": ["run-seed0"]}),
    ],
)
def test_split_rows_is_disjoint_by_group(two_run_table, split, kwargs):
    train, held = split_rows(two_run_table, split, **kwargs)
    assert len(train) and len(held)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == len(two_run_table)
    assert not _groups(two_run_table, train) & _groups(two_run_table, held)
    if split == "runs":
        assert set(two_run_table.run_id[held]) == set(kwargs.get("eval_runs", ["run-seed1"]))
    else:
        assert set(two_run_table.param_name[held]) == set(kwargs.get("eval_layers", ["fc2.weight"]))


def test_split_rows_errors_and_auto(two_run_table):
    with pytest.raises(ValueError, match="run-seed9"):
        split_rows(two_run_table, "runs", eval_runs=["run-seed9"])
    with pytest.raises(ValueError, match="fc9.weight"):
        split_rows(two_run_table, "layers", eval_layers=["fc9.weight"])
    with pytest.raises(ValueError, match="every run"):
        split_rows(two_run_table, "runs", eval_runs=["run-seed0", "run-seed1"])
    with pytest.raises(ValueError, match="every tensor"):
        split_rows(two_run_table, "layers", eval_layers=["fc1.weight", "fc2.weight", "fc3.weight"])
    with pytest.raises(ValueError, match="weights"):
        split_rows(two_run_table, "weights")
    train, held = split_rows(two_run_table, "auto")
    assert set(two_run_table.run_id[held]) == {"run-seed1"} and set(two_run_table.run_id[train]) == {"run-seed0"}
    one_run = two_run_table.subset(np.nonzero(two_run_table.run_id == "run-seed0")[0])
    train, held = split_rows(one_run, "auto")
    assert set(one_run.param_name[held]) == {"fc2.weight"} and "fc2.weight" not in set(one_run.param_name[train])


# ------------------------------------------------------------------------------------------------------- losses


def test_pairwise_ranking_loss_orders_and_ignores_other_groups():
    targets = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.0, 0.5, 1.0, 0.3])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])

    def loss(scores, group=group):
        return pairwise_ranking_loss(scores, targets, group, generator=torch.Generator().manual_seed(0))

    ordered = targets * 10
    assert loss(ordered) < loss(-ordered)
    assert loss(ordered) < 0.2 < loss(-ordered)
    # Scores of group 1 shifted far down: the order across groups is reversed, the loss must not change.
    shifted = ordered - 100 * group
    assert torch.allclose(loss(shifted), loss(ordered))
    # Without groups the cross-group pairs count, and the shift is punished.
    assert loss(shifted, None) > loss(ordered, None)
    # Only cross-group pairs or tied targets: nothing to learn, zero loss with a gradient path.
    scores = torch.randn(4, requires_grad=True)
    zero = pairwise_ranking_loss(scores, torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.arange(4))
    assert zero.item() == 0.0 and zero.requires_grad
    assert pairwise_ranking_loss(scores, torch.ones(4)).item() == 0.0


def test_forward_loss_matches_config():
    x = torch.randn(16, AutoSConfig().num_features)
    labels = torch.rand(16)
    mse = AutoSModel(AutoSConfig(loss="mse"))
    out = mse(features=x, labels=labels)
    assert torch.allclose(out.loss, torch.nn.functional.mse_loss(out.scores, labels))
    ranking = AutoSModel(AutoSConfig(loss="ranking"))
    assert ranking(features=x, labels=labels, group=torch.zeros(16, dtype=torch.long)).loss.item() > 0
    assert ranking(features=x).loss is None


# ----------------------------------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def score_folders(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("scores")
    return [str(save_synthetic_run(root / f"seed{s}", seed=s)) for s in (0, 1)]


def _train(folders, output_dir, dataset=None, **overrides):
    kwargs = dict(
        score_datasets=folders,
        output_dir=str(output_dir),
        eval_split="runs",
        epochs=2.0,
        batch_size=256,
        learning_rate=3e-3,
        disable_tqdm=True,
        # The paper's setup: these tests check the surviving-score regression itself.
        target="survival",
        budgets="none",
        balance_layers=False,
        within_layer="predictor",
    )
    kwargs.update(overrides)
    return train_autos(AutoSTrainingArguments(**kwargs), dataset)


def test_train_autos_learns_the_surviving_score(score_folders, tmp_path):
    model, report = _train(score_folders, tmp_path)
    metrics = report["metrics"]
    for name in ("autos", "magnitude", "snip"):
        for key in ("spearman", "overlap@10%", "overlap@5%", "overlap@1%"):
            assert f"{name}_{key}" in metrics
    assert metrics["autos_spearman"] > 0.9
    assert metrics["autos_spearman"] > metrics["snip_spearman"]
    assert report["eval_runs"] == ["run-seed1"] and report["train_rows"] == report["eval_rows"] == NUM_WEIGHTS
    assert {p.name for p in tmp_path.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "metrics.json",
        "loss_curve.png",
        "README.md",
    }
    assert not list(tmp_path.glob("*.bin"))
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: autosparse_hf") and "run-seed0" in card and "AutoSCallback(" in card
    assert f"{metrics['autos_spearman']:.4f}" in card
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"]["autos_spearman"] == pytest.approx(metrics["autos_spearman"])
    assert saved["loss_history"] and saved["loss_history"][-1]["loss"] < saved["loss_history"][0]["loss"]
    reloaded = load_predictor(tmp_path)
    # Trained on the first run only; g0 batch count travels from the score datasets into the predictor.
    assert reloaded.config.training_sources == ["run-seed0"]
    assert reloaded.config.feature_num_batches == FEATURE_NUM_BATCHES
    held = score_table(load_score_dataset(score_folders[1]), "default")
    assert torch.equal(reloaded.predict(held.features), model.predict(held.features))


def test_train_autos_ranking_loss(score_folders, tmp_path):
    model, report = _train(score_folders, tmp_path, loss="ranking")
    assert model.config.loss == "ranking"
    assert report["metrics"]["autos_spearman"] > 0.9


def test_chunks_never_leave_a_single_row():
    _, _, _, dataset, _ = synthetic_run(seed=0)
    table = score_table(dataset, "default")
    for batch_size in (256, NUM_WEIGHTS - 1, 1000):
        chunks = ChunkDataset(survival_examples(table), batch_size, shuffle=True, seed=0)
        sizes = [len(c) for c in chunks.chunks]
        assert sum(sizes) == NUM_WEIGHTS and min(sizes) > 1
        assert sorted(torch.cat(chunks.chunks).tolist()) == list(range(NUM_WEIGHTS))


def test_train_paper_fc_with_odd_row_count(score_folders, tmp_path):
    """paper_fc has batch norm: a trailing one-row batch used to crash training."""
    model, report = _train(
        score_folders[:1], tmp_path, architecture="paper_fc", eval_split="layers", max_train_rows=257, epochs=1.0
    )
    assert report["train_rows"] == 257 and model.config.architecture == "paper_fc"
    assert math.isfinite(report["metrics"]["autos_spearman"])


def test_feature_batches_survive_concatenation(score_folders):
    """``concatenate_datasets`` joins the descriptions; the recorded g0 batch count must still be found."""
    merged = load_score_datasets(score_folders)
    assert _feature_num_batches(merged) == FEATURE_NUM_BATCHES
    assert _feature_num_batches(load_score_datasets(score_folders[:1])) == FEATURE_NUM_BATCHES


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [
        ({"architecture": "cnn"}, "cnn"),
        ({"loss": "rank"}, "rank"),
        ({"feature_set": "pixels"}, "pixels"),
        ({"eval_split": "weights"}, "weights"),
        ({"epochs": 0}, "epochs"),
        ({"within_layer": "grasp"}, "grasp"),
        ({"target": "survival", "loss": "bce"}, "does not fit target 'survival'"),
        ({"loss": "mse"}, "does not fit target 'membership'"),
    ],
)
def test_training_arguments_fail_fast(kwargs, value):
    with pytest.raises(ValueError, match=value):
        AutoSTrainingArguments(score_datasets=["/nonexistent"], **kwargs)


def test_training_arguments_default_to_the_measured_default():
    args = AutoSTrainingArguments()
    assert (args.target, args.loss, args.budgets, args.balance_layers, args.within_layer) == (
        "membership", "bce", "learned", True, "synflow"
    )
    assert AutoSTrainingArguments(target="survival").loss == "mse"  # loss="auto" follows the target
    assert AutoSTrainingArguments(target="survival", loss="ranking").loss == "ranking"


def test_train_autos_from_an_in_memory_dataset_equals_training_from_the_folders(score_folders, tmp_path):
    from datasets import concatenate_datasets

    from autosparse_hf.records import load_score_dataset

    in_memory = concatenate_datasets([load_score_dataset(f) for f in score_folders])
    from_disk, _ = _train(score_folders, tmp_path / "disk", epochs=1.0)
    from_memory, report = _train(["/not/read"], tmp_path / "memory", epochs=1.0, dataset=in_memory)
    assert report["arguments"]["score_datasets"] == "<in-memory Dataset>"
    assert from_memory.config.training_sources == from_disk.config.training_sources == ["run-seed0"]
    for a, b in zip(from_disk.state_dict().values(), from_memory.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="datasets.Dataset of surviving scores, got dict"):
        _train(score_folders, tmp_path / "bad", dataset={"w0": [1.0]})
