"""Figures of ``autosparse_hf.study.plots`` on tiny synthetic score datasets: axes, lines and the numbers they draw."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest
from autos_utils import CYCLES, NUM_WEIGHTS, synthetic_run
from datasets import concatenate_datasets
from matplotlib.figure import Figure

from autosparse_hf import compute_scores
from autosparse_hf.records.report import write_cycle_report
from autosparse_hf.study.plots import (
    align_scores,
    load_irp_history,
    plot_accuracy_vs_sparsity,
    plot_irp_curve,
    plot_layer_survival,
    plot_survival_scatter,
    score_columns,
)

TENSORS = ["fc1.weight", "fc2.weight", "fc3.weight"]


@pytest.fixture(scope="module")
def run():  # noqa: ANN201
    return synthetic_run(0)


@pytest.fixture(scope="module")
def dataset(run):  # noqa: ANN001, ANN201
    return run[3]


def _history(cycles: int = 4) -> list[dict]:
    densities = [1.0 - 0.2 * c for c in range(cycles + 1)]
    return [
        {"cycle": c + 1, "density": d, "sparsity": 1.0 - d, "step": 10 * (c + 1), "eval_accuracy": 0.9 - 0.05 * c,
         "eval_loss": 0.3 + 0.1 * c}
        for c, d in enumerate(densities)
    ]


def _title_rho(ax) -> float:  # noqa: ANN001
    return float(re.search(r"ρ = (-?[0-9.]+|nan)", ax.get_title()).group(1))


def test_score_columns_read_whole_columns(dataset) -> None:  # noqa: ANN001
    cols = score_columns(dataset, ["w0", "param_name", "cycle_pruned"])
    assert len(cols["w0"]) == NUM_WEIGHTS == len(dataset)
    assert list(dict.fromkeys(cols["param_name"].tolist())) == TENSORS
    np.testing.assert_array_equal(cols["cycle_pruned"], np.asarray(dataset["cycle_pruned"]))
    # A select() view is read in its own row order, not the underlying table's.
    view = dataset.select([5, 2, 7])
    np.testing.assert_array_equal(score_columns(view, ["index"])["index"], np.asarray(dataset["index"])[[5, 2, 7]])
    with pytest.raises(ValueError, match="no column"):
        score_columns(dataset, ["nope"])


def test_align_scores_lines_criterion_scores_up_with_rows(run) -> None:  # noqa: ANN001
    model, batches, _, dataset, _ = run
    scores = compute_scores(model, "magnitude")
    aligned = align_scores(dataset, scores)
    np.testing.assert_allclose(aligned, np.abs(score_columns(dataset, ["w0"])["w0"]), rtol=1e-6)
    with pytest.raises(KeyError, match="fc2.weight"):
        align_scores(dataset, {k: v for k, v in scores.items() if k != "fc2.weight"})
    with pytest.raises(ValueError, match="values"):
        align_scores(dataset, {**scores, "fc3.weight": scores["fc3.weight"][:3]})


def test_survival_scatter_one_panel_per_quantity(dataset) -> None:  # noqa: ANN001
    fig = plot_survival_scatter(dataset, x=["w0", "g0", "snip"], sample=500)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert len(ax.lines) == 1  # the bin-mean curve
        assert len(ax.collections) == len(TENSORS)  # one scatter per tensor
        assert sum(len(c.get_offsets()) for c in ax.collections) == 500
        assert ax.get_xscale() == "log"
    # The legend lists the tensors and the mean curve.
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [*TENSORS, "bin mean"]


def test_survival_scatter_numbers(dataset) -> None:  # noqa: ANN001
    # The synthetic labels are a monotone function of the within-tensor rank of |w0|.
    fig = plot_survival_scatter(dataset, x="w0", x_scale="layer_rank", sample=100_000, bins=10)
    ax = fig.axes[0]
    assert len(ax.collections) == len(TENSORS)
    assert sum(len(c.get_offsets()) for c in ax.collections) == NUM_WEIGHTS  # sample capped at the rows
    means = ax.lines[0].get_ydata()
    assert len(means) == 10
    assert np.all(np.diff(means) > 0) and means[0] < 0.15 and means[-1] > 0.85
    cols = score_columns(dataset, ["w0", "param_name", "surviving_score"])
    from scipy.stats import rankdata, spearmanr

    # The title's correlation is of the quantity as drawn: |w0| ranked inside each tensor.
    layer_rank = np.empty(len(dataset))
    for name in TENSORS:
        rows = cols["param_name"] == name
        layer_rank[rows] = (rankdata(np.abs(cols["w0"][rows])) - 1) / (rows.sum() - 1)
    assert _title_rho(ax) == pytest.approx(spearmanr(layer_rank, cols["surviving_score"]).statistic, abs=1e-3)
    assert _title_rho(ax) > 0.95
    glob = plot_survival_scatter(dataset, x="w0", sample=100).axes[0]
    assert _title_rho(glob) == pytest.approx(
        spearmanr(np.abs(cols["w0"]), cols["surviving_score"]).statistic, abs=1e-3
    )
    # Jitter keeps every point within half a cycle of its true surviving score.
    for collection in ax.collections:
        y = collection.get_offsets()[:, 1]
        assert np.all(np.abs(y * CYCLES - np.round(y * CYCLES)) < 0.5)


def test_survival_scatter_extra_scores_and_errors(run) -> None:  # noqa: ANN001
    model, batches, _, dataset, _ = run
    grasp = compute_scores(model, "grasp", dataloader=batches, num_batches=2)
    per_row = np.arange(len(dataset), dtype=float)
    fig = plot_survival_scatter(dataset, x=["grasp", "row"], scores={"grasp": grasp, "row": per_row}, sample=300)
    assert len(fig.axes) == 2
    assert fig.axes[0].get_xscale() == "linear"  # signed GraSP scores are ranked, not logged
    assert "percentile rank" in fig.axes[0].get_xlabel()
    fig = plot_survival_scatter(dataset, x="fan_in", sample=100)  # any numeric column
    assert fig.axes[0].get_xlabel() == "fan_in"
    with pytest.raises(ValueError, match="x_scale"):
        plot_survival_scatter(dataset, x_scale="cubic")
    with pytest.raises(ValueError, match="no column"):
        plot_survival_scatter(dataset, x="nope")
    with pytest.raises(ValueError, match="one value per row"):
        plot_survival_scatter(dataset, x="bad", scores={"bad": np.zeros(3)})


def test_layer_survival_lines_are_the_masks_after_each_cycle(dataset) -> None:  # noqa: ANN001
    fig = plot_layer_survival(dataset, log=False)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == len(TENSORS) + 1  # one per tensor and the global density
    cols = score_columns(dataset, ["param_name", "cycle_pruned"])
    for line, name in zip(ax.lines, TENSORS, strict=False):
        rows = cols["param_name"] == name
        expected = [(cols["cycle_pruned"][rows] > c).mean() for c in range(CYCLES + 1)]
        np.testing.assert_allclose(line.get_ydata(), expected)
        np.testing.assert_array_equal(line.get_xdata(), np.arange(CYCLES + 1))
    glob = ax.lines[-1].get_ydata()
    np.testing.assert_allclose(glob, [(cols["cycle_pruned"] > c).mean() for c in range(CYCLES + 1)])
    assert glob[0] == 1.0 and np.all(np.diff(glob) <= 0)
    assert plot_layer_survival(dataset).axes[0].get_yscale() == "log"


def test_layer_survival_refuses_mixed_runs(dataset) -> None:  # noqa: ANN001
    other = synthetic_run(1)[3]
    with pytest.raises(ValueError, match="2 IRP runs"):
        plot_layer_survival(concatenate_datasets([dataset, other]))


def test_irp_curve_from_history_and_files(tmp_path) -> None:  # noqa: ANN001
    history = _history()
    fig = plot_irp_curve(history, title="run")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    left, right = fig.axes
    assert len(left.lines) == 2  # the ticket curve and the dense (cycle 1) reference
    np.testing.assert_allclose(left.lines[0].get_xdata(), [0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(left.lines[0].get_ydata(), [85.0, 80.0, 75.0, 70.0])
    assert left.get_xscale() == "logit"
    assert len(right.lines) == 1
    np.testing.assert_allclose(right.lines[0].get_ydata(), [1.0, 0.8, 0.6, 0.4, 0.2])
    # The run folder's cycles.csv gives the same curve.
    write_cycle_report({"history": history, "identity": {}}, tmp_path)
    assert load_irp_history(tmp_path / "cycles.csv") == history
    from_csv = plot_irp_curve(tmp_path)
    np.testing.assert_allclose(from_csv.axes[0].lines[0].get_ydata(), left.lines[0].get_ydata())
    loss = plot_irp_curve(history, metric="eval_loss")
    np.testing.assert_allclose(loss.axes[0].lines[0].get_ydata(), [0.4, 0.5, 0.6, 0.7])
    with pytest.raises(ValueError, match="eval_f1"):
        plot_irp_curve(history, metric="eval_f1")


def test_accuracy_vs_sparsity_summarizes_seeds() -> None:
    rows = [{"criterion": "dense", "sparsity": 0.0, "seed": s, "accuracy": 0.95} for s in (1, 2)]
    for criterion, base in (("snip", 0.9), ("random", 0.6)):
        for sparsity in (0.9, 0.99):
            for seed, delta in ((1, -0.01), (2, 0.01)):
                rows.append({"criterion": criterion, "sparsity": sparsity, "seed": seed,
                             "accuracy": base - (sparsity - 0.9) + delta})
    fig = plot_accuracy_vs_sparsity(rows, irp_history=_history(), title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["dense", "snip", "random", "IRP ticket (source seed)"]
    assert len(ax.lines) == 4
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [95.0, 95.0])  # dense: a horizontal line
    np.testing.assert_allclose(ax.lines[1].get_xdata(), [0.9, 0.99])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [90.0, 81.0])
    np.testing.assert_allclose(ax.lines[2].get_ydata(), [60.0, 51.0])
    # By default only the tickets from the last one at or below 90% sparsity on (80%) are drawn.
    np.testing.assert_allclose(ax.lines[3].get_xdata(), [0.8])
    assert len(ax.collections) == 2  # one ±std band per pruned method
    full = plot_accuracy_vs_sparsity(rows, irp_history=_history(), full_irp_curve=True)
    np.testing.assert_allclose(full.axes[0].lines[3].get_xdata(), [0.2, 0.4, 0.6, 0.8])
    # Summary rows (experiments.summarize) are drawn as given.
    from autosparse_hf.study.grid import summarize

    again = plot_accuracy_vs_sparsity(summarize(rows))
    np.testing.assert_allclose(again.axes[0].lines[1].get_ydata(), [90.0, 81.0])


def test_figures_leave_pyplot_and_backend_alone(dataset, tmp_path) -> None:  # noqa: ANN001
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    before = plt.get_fignums()
    figs = [
        plot_survival_scatter(dataset, sample=100),
        plot_layer_survival(dataset),
        plot_irp_curve(_history()),
        plot_accuracy_vs_sparsity([{"criterion": "snip", "sparsity": 0.9, "accuracy": 0.9}]),
    ]
    assert plt.get_fignums() == before and matplotlib.get_backend() == backend
    for i, fig in enumerate(figs):
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 1000
