"""The issue-7 levers: the density-conditioned membership target and the learned layer-budget model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from autos_utils import CYCLES, NUM_WEIGHTS, save_synthetic_run, small_mlp, synthetic_batches

import autosparse_hf as A
from autosparse_hf.features import LayerContext, with_density
from autosparse_hf.predictor import AutoSConfig, AutoSModel
from autosparse_hf.predictor.budgets import BUDGET_FEATURES, budget_design, fit_budget_model, predict_layer_counts
from autosparse_hf.predictor.data import score_table
from autosparse_hf.predictor.training import AutoSTrainingArguments, membership_examples, train_autos
from autosparse_hf.records import load_score_dataset


def _layers() -> list[LayerContext]:
    sizes = [(784, 300), (300, 100), (100, 10)]
    return [
        LayerContext(name=f"fc{i}.weight", kind="linear", fan_in=a, fan_out=b, depth=i, relative_depth=i / 2,
                     numel=a * b, shape=(b, a))
        for i, (a, b) in enumerate(sizes)
    ]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _synthetic_irp(layers: list[LayerContext], offsets: list[float], cycles: int = 10) -> dict[str, np.ndarray]:
    """cycle_pruned arrays whose per-tensor density after cycle c is sigmoid(logit(d_c) + offset_l) (approx.)."""
    records = {}
    for layer, offset in zip(layers, offsets, strict=True):
        levels = np.full(layer.numel, cycles + 1, dtype=np.int64)
        for c in range(cycles, 0, -1):
            d = 1 - c * 0.09  # global density schedule 0.91 .. 0.10
            keep = 1 / (1 + math.exp(-(_logit(d) + offset)))
            levels[int(round(keep * layer.numel)) :] = np.minimum(levels[int(round(keep * layer.numel)) :], c)
        records[layer.name] = levels
    return records


def test_budget_model_recovers_a_known_split_and_counts_are_exact():
    layers = _layers()
    # The first (largest) layer keeps far less than the global density, the last far more.
    records = _synthetic_irp(layers, offsets=[-1.0, 0.5, 2.0])
    model = fit_budget_model([(layers, records)], ridge=1e-6)
    assert model["features"] == list(BUDGET_FEATURES) and model["points"] == 3 * 10
    total = sum(layer.numel for layer in layers)
    for c in (3, 7, 10):
        true = {layer.name: int((records[layer.name] > c).sum()) for layer in layers}
        d = sum(true.values()) / total
        counts = predict_layer_counts(model, layers, d)
        assert sum(counts.values()) == int(round(d * total))
        for layer in layers:
            assert 1 <= counts[layer.name] <= layer.numel
            # Fitted on these very points: the split is reproduced to within 2% of each tensor.
            assert abs(counts[layer.name] - true[layer.name]) <= 0.02 * layer.numel, (c, layer.name)
    design = budget_design(layers[0], total, 0.5)
    assert design[list(BUDGET_FEATURES).index("log_share")] == pytest.approx(math.log(layers[0].numel / total))


def test_budget_counts_are_exact_and_bounded_at_extreme_densities():
    layers = _layers()
    model = fit_budget_model([(layers, _synthetic_irp(layers, offsets=[-3.0, 0.0, 4.0]))])
    total = sum(layer.numel for layer in layers)
    for d in (0.001, 0.01, 0.5, 0.99):
        counts = predict_layer_counts(model, layers, d)
        assert sum(counts.values()) == int(round(d * total))
        assert all(1 <= counts[layer.name] <= layer.numel for layer in layers)


def test_membership_examples_label_membership_at_the_sampled_density(tmp_path):
    folder = save_synthetic_run(tmp_path / "run", seed=0)
    table = score_table(load_score_dataset(folder), "default")
    examples = membership_examples(table, samples_per_row=3, seed=0, balance_layers=True)
    assert examples.features.shape == (3 * NUM_WEIGHTS, table.features.shape[1] + 1)
    rows = np.repeat(np.arange(len(table)), 3)
    densities = np.asarray(next(iter(table.densities.values())))
    log_d = examples.features[:, -1].numpy()
    # Recover the sampled cycle from the density input, then check the label is "in the mask after cycle c".
    cycle = np.array([int(np.argmin(np.abs(np.log(densities) - v))) for v in log_d])
    assert (cycle >= 1).all() and (cycle <= CYCLES).all()
    assert np.array_equal(examples.labels.numpy().astype(bool), table.cycle_pruned[rows] > cycle)
    # Layer balance: every tensor carries the same total weight.
    totals = np.bincount(examples.group.numpy(), weights=examples.weight.numpy())
    assert np.allclose(totals, totals[0])


def test_membership_predictor_trains_and_prunes_with_its_density_and_budgets(tmp_path):
    folders = [str(save_synthetic_run(tmp_path / f"run{s}", seed=s)) for s in (0, 1)]
    model, report = train_autos(
        AutoSTrainingArguments(
            score_datasets=folders, output_dir=str(tmp_path / "p"), target="membership", loss="bce",
            budgets="learned", balance_layers=True, epochs=3, batch_size=512, disable_tqdm=True,
        )
    )
    assert model.config.target == "membership" and model.config.num_inputs == model.config.num_features + 1
    assert model.config.budget_model is not None and report["budget_model"]["points"] > 0
    # The synthetic score is the within-layer rank of |w0|: the held-out overlap must beat chance by far.
    assert report["metrics"]["autos_overlap@10%"] > 0.5
    net = small_mlp(seed=5)
    loader = synthetic_batches(seed=5)
    masks = A.prune_at_init(net, "autos", 0.9, loader, criterion_options={"predictor": str(tmp_path / "p")})
    expected = predict_layer_counts(model.config.budget_model, A.features.layer_contexts(A.get_prunable_parameters(net)), 0.1)
    assert {n: int(m.sum()) for n, m in masks.items()} == expected
    assert masks.metadata["scope"] == "counts" and masks.metadata["budgets"] == "learned"
    # budgets="global" ignores the budget model (for ablations); the old name scope= still works.
    masks_global = A.prune_at_init(small_mlp(seed=5), "autos", 0.9, loader,
                                   criterion_options={"predictor": str(tmp_path / "p")}, scope="global")
    assert masks_global.metadata["scope"] == "global" and masks_global.num_kept == masks.num_kept


def test_with_density_appends_log_density_and_the_model_uses_it():
    x = torch.randn(5, 3)
    y = with_density(x, 0.05)
    assert y.shape == (5, 4) and torch.allclose(y[:, -1], torch.full((5,), math.log(0.05)))
    model = AutoSModel(AutoSConfig(feature_set="normalized", target="membership", loss="bce"))
    features = torch.randn(7, model.config.num_features)
    assert not torch.equal(model.predict(with_density(features, 0.5)), model.predict(with_density(features, 0.01)))
    with pytest.raises(ValueError, match="does not fit target"):
        AutoSConfig(target="membership", loss="mse")


def test_within_layer_snip_keeps_the_budgets_and_ranks_by_snip(tmp_path):
    folders = [str(save_synthetic_run(tmp_path / f"run{s}", seed=s)) for s in (0, 1)]
    model, _ = train_autos(
        AutoSTrainingArguments(
            score_datasets=folders, output_dir=str(tmp_path / "p"), target="membership", loss="bce",
            budgets="learned", within_layer="snip", epochs=1, batch_size=1024, disable_tqdm=True,
        )
    )
    assert AutoSModel.from_pretrained(str(tmp_path / "p")).config.within_layer == "snip"
    net, loader = small_mlp(seed=7), synthetic_batches(seed=7)
    params = A.get_prunable_parameters(net)
    features = A.compute_initial_features(net, loader, model.config.feature_num_batches)
    # The predictor's recipe is composed explicitly (learned budgets + SNIP on its gradient batches); the "autos"
    # criterion itself always ranks with the predictor's own scores.
    config = A.PruneConfig.from_predictor(str(tmp_path / "p"), sparsity=0.8)
    assert (config.criterion, config.budgets, config.num_batches) == ("snip", "learned", model.config.feature_num_batches)
    masks = A.prune_at_init(net, config=config, dataloader=loader)
    counts = predict_layer_counts(model.config.budget_model, A.features.layer_contexts(params), 0.2)
    for name, mask in masks.items():
        assert int(mask.sum()) == counts[name]
        snip = (features.weights[name] * features.gradients[name]).abs().reshape(-1)
        kept = snip[mask.reshape(-1)]
        dropped = snip[~mask.reshape(-1)]
        assert kept.min() >= dropped.max()  # the top-|w0 g0| weights of the tensor, nothing else
    with pytest.raises(ValueError, match="within_layer"):
        AutoSConfig(within_layer="magic")


def test_within_layer_synflow_runs_synflow_inside_the_learned_budgets(tmp_path):
    from autosparse_hf.criteria.synflow import SynFlowCriterion

    folders = [str(save_synthetic_run(tmp_path / f"run{s}", seed=s)) for s in (0, 1)]
    model, _ = train_autos(
        AutoSTrainingArguments(
            score_datasets=folders, output_dir=str(tmp_path / "p"), within_layer="synflow", epochs=1,
            batch_size=1024, disable_tqdm=True,
        )
    )
    assert model.config.within_layer == "synflow" and model.config.budget_model is not None
    net, loader = small_mlp(seed=7), synthetic_batches(seed=7)
    params = A.get_prunable_parameters(net)
    counts = predict_layer_counts(model.config.budget_model, A.features.layer_contexts(params), 0.1)
    # "SynFlow inside learned budgets" is spelled as such; AutoSCallback follows the predictor's recipe the same way.
    masks = A.prune_at_init(net, "synflow", 0.9, loader, budgets="learned", predictor=str(tmp_path / "p"))
    assert masks.metadata["criterion"] == "synflow" and masks.metadata["budgets"] == "learned"
    expected = A.prune_at_init(small_mlp(seed=7), SynFlowCriterion(budgets=counts), 0.9, loader)
    for name, mask in masks.items():
        assert int(mask.sum()) == counts[name]
        assert torch.equal(mask, expected[name])
    config = A.PruneConfig.from_predictor(str(tmp_path / "p"), sparsity=0.9)
    assert (config.criterion, config.budgets) == ("synflow", "learned")
    via_recipe = A.prune_at_init(small_mlp(seed=7), config=config, dataloader=loader)
    assert all(torch.equal(via_recipe[n], masks[n]) for n in masks)
