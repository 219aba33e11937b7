"""Figures for surviving-score datasets, IRP runs and pruning comparisons (what the notebooks show).

Every function returns a ``matplotlib.figure.Figure`` built without ``pyplot``: nothing is drawn on a global figure,
no backend is selected and nothing is shown, so the functions are safe under ``Agg`` (scripts, tests, servers). In
Jupyter a returned figure renders when it is the last expression of a cell (after ``%matplotlib inline``); elsewhere
call ``fig.savefig(path)``.

The figures follow AutoSparse (Liu et al. 2024, "Learning effective pruning at initialization from iterative
pruning", arXiv 2408.14757): its Figure 1 relates the IRP surviving score of every weight to quantities known at
initialization (``plot_survival_scatter``); the per-tensor survival curves show where IRP puts its layer budgets
(``plot_layer_survival``); the per-cycle ticket accuracy is the lottery-ticket curve that pruning at initialization is
compared against (``plot_irp_curve``, ``plot_accuracy_vs_sparsity``).

Example:
    ```python
    >>> from autosparse_hf import load_score_dataset
    >>> from autosparse_hf.plots import plot_layer_survival, plot_survival_scatter
    >>> scores = load_score_dataset("outputs/irp/irp")
    >>> plot_survival_scatter(scores, x=["w0", "g0", "snip"]).savefig("survival.png")
    >>> plot_layer_survival(scores).savefig("layers.png")
    ```
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..records.report import load_irp_history, logit_sparsity_axis, plot_irp_curve

__all__ = [
    "SCATTER_QUANTITIES",
    "X_SCALES",
    "align_scores",
    "load_irp_history",
    "plot_accuracy_vs_sparsity",
    "plot_irp_curve",
    "plot_layer_survival",
    "plot_survival_scatter",
    "score_columns",
]

# Built-in x quantities of ``plot_survival_scatter``: axis label and the dataset columns they are computed from.
SCATTER_QUANTITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "w0": ("|w0| (initial weight)", ("w0",)),
    "magnitude": ("|w0| (initial weight)", ("w0",)),
    "g0": ("|g0| (initial gradient)", ("g0",)),
    "snip": ("SNIP |w0 g0|", ("w0", "g0")),
}
X_SCALES: tuple[str, ...] = ("auto", "linear", "log", "rank", "layer_rank")

# At most this many rows enter the Spearman correlation printed in a scatter panel's title (a random subset beyond).
_MAX_CORRELATION_ROWS = 1_000_000


# ------------------------------------------------------------------------------------------------------ data access
def _arrow_table(dataset: Any) -> pa.Table:
    if getattr(dataset, "_indices", None) is not None:  # a select()/shuffle() view: materialize the row order
        dataset = dataset.flatten_indices()
    data = dataset.data
    return data.table if hasattr(data, "table") else data


def score_columns(dataset: Any, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Whole columns of a score dataset as numpy arrays (strings as ``str`` arrays), without a Python row loop."""
    table = _arrow_table(dataset)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"the dataset has no column(s) {missing}; it has {table.column_names}")
    result = {}
    for name in columns:
        column = table.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            result[name] = column.to_numpy().astype(str)
        else:
            result[name] = column.to_numpy()
    return result


def _encoded(dataset: Any, column: str) -> tuple[np.ndarray, list[str]]:
    """Integer codes and the distinct values (in first-appearance order) of a string column."""
    encoded = pc.dictionary_encode(_arrow_table(dataset).column(column)).combine_chunks()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def _single_run(dataset: Any) -> None:
    _, runs = _encoded(dataset, "run_id")
    if len(runs) > 1:
        raise ValueError(
            f"the dataset holds {len(runs)} IRP runs ({', '.join(map(repr, runs))}); per-tensor survival mixes runs "
            "with different cycles; pass one run (dataset.filter(lambda r: r['run_id'] == ...))"
        )


def align_scores(dataset: Any, scores: Mapping[str, Any]) -> np.ndarray:
    """One value per dataset row from per-tensor criterion scores (``compute_scores`` output), by name and index.

    ``scores[param_name]`` is flattened and read at each row's ``index``, so any criterion computed on the model the
    run started from (rebuilt from the same seed) lines up with the surviving scores row by row.

    Raises:
        KeyError: a tensor of the dataset is missing from ``scores``.
        ValueError: a tensor's size differs from the dataset's ``numel``.
    """
    codes, names = _encoded(dataset, "param_name")
    cols = score_columns(dataset, ["index", "numel"])
    result = np.empty(len(codes), dtype=np.float64)
    for code, name in enumerate(names):
        if name not in scores:
            raise KeyError(f"scores lack tensor {name!r} of the dataset (they have {sorted(scores)[:5]}...)")
        value = scores[name]
        flat = np.asarray(value.detach().cpu().double() if hasattr(value, "detach") else value, dtype=np.float64)
        flat = flat.reshape(-1)
        rows = codes == code
        numel = int(cols["numel"][rows][0])
        if flat.size != numel:
            raise ValueError(f"scores[{name!r}] has {flat.size} values; the dataset's tensor has {numel}")
        result[rows] = flat[cols["index"][rows]]
    return result


# ----------------------------------------------------------------------------------------------------- formatting
def _within_group_rank(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Percentile rank of each value inside its group (0 = smallest), ties broken by position."""
    order = np.lexsort((values, groups))
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, len(values)])
    position = np.arange(len(values)) - np.repeat(starts, sizes)
    ranks[order] = position / np.maximum(np.repeat(sizes, sizes) - 1, 1)
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> float:
    from scipy.stats import spearmanr

    if len(x) > _MAX_CORRELATION_ROWS:
        rows = rng.choice(len(x), _MAX_CORRELATION_ROWS, replace=False)
        x, y = x[rows], y[rows]
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(spearmanr(x, y).statistic)


# --------------------------------------------------------------------------------------------------------- figures
def plot_survival_scatter(
    dataset: Any,
    x: str | Sequence[str] = "w0",
    *,
    scores: Mapping[str, Any] | None = None,
    sample: int = 20_000,
    x_scale: str = "auto",
    bins: int = 20,
    seed: int = 0,
) -> Figure:
    """Surviving score against a quantity at initialization, one panel per quantity (AutoSparse, Figure 1).

    Each panel scatters a random sample of weights (coloured by tensor; the discrete surviving scores are jittered
    vertically by less than half a cycle so that the bands stay apart) and draws the mean surviving score in
    ``bins`` quantile bins of the x quantity over **all** rows (black line). The title gives Spearman's rank
    correlation between the x quantity as drawn (with ``x_scale="layer_rank"``: its rank inside its tensor) and the
    surviving score over all rows (a random million beyond that).

    Args:
        dataset: A surviving-score dataset of one or more runs (``IRPCallback.to_dataset()``, ``load_score_dataset``).
        x: ``"w0"`` (|w0|), ``"g0"`` (|g0|), ``"snip"`` (|w0 g0|), a numeric column of the dataset, or a key of
            ``scores``; a list gives one panel each.
        scores: Extra quantities by name: per-tensor criterion scores (the output of ``compute_scores``, e.g. GraSP
            on the rebuilt initial model; aligned with ``align_scores``) or arrays with one value per row.
        sample: Points drawn per panel (all rows if the dataset is smaller).
        x_scale: ``"log"`` (default for non-negative quantities), ``"linear"``, ``"rank"`` (percentile over all
            rows; default for signed quantities such as GraSP) or ``"layer_rank"`` (percentile inside each tensor,
            the ordering a layer-wise budget acts on).
        bins: Quantile bins of the mean curve.
        seed: Seed of the sample.

    Returns:
        A ``Figure`` with one axis per quantity.
    """
    if x_scale not in X_SCALES:
        raise ValueError(f"x_scale must be one of {X_SCALES}, got {x_scale!r}")
    quantities = [x] if isinstance(x, str) else list(x)
    if not quantities:
        raise ValueError("x names no quantity")
    scores = dict(scores or {})
    n_rows = len(dataset)
    if n_rows == 0:
        raise ValueError("the dataset is empty")
    needed = {"surviving_score", "cycles"}
    for q in quantities:
        if q in scores:
            continue
        needed.update(SCATTER_QUANTITIES[q][1] if q in SCATTER_QUANTITIES else (q,))
    cols = score_columns(dataset, sorted(needed))
    groups, names = _encoded(dataset, "param_name")
    y = cols["surviving_score"].astype(np.float64)
    cycles = max(int(cols["cycles"].max()), 1)
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(n_rows, min(sample, n_rows), replace=False))
    jitter = rng.uniform(-0.35, 0.35, len(shown)) / cycles
    colors = [f"C{i % 10}" for i in range(len(names))]

    fig = Figure(figsize=(4.2 * len(quantities), 3.8), layout="constrained")
    axes = fig.subplots(1, len(quantities), squeeze=False)[0]
    for ax, q in zip(axes, quantities, strict=True):
        if q in scores:
            value = scores[q]
            values = align_scores(dataset, value) if isinstance(value, Mapping) else np.asarray(value, np.float64)
            if values.shape != (n_rows,):
                raise ValueError(f"scores[{q!r}] has shape {values.shape}; expected one value per row ({n_rows})")
            label = q
        elif q in SCATTER_QUANTITIES:
            label = SCATTER_QUANTITIES[q][0]
            values = np.abs(np.prod([cols[c].astype(np.float64) for c in SCATTER_QUANTITIES[q][1]], axis=0))
        else:
            label, values = q, cols[q].astype(np.float64)
        scale = x_scale
        if scale == "auto":
            scale = "log" if values.min() >= 0 else "rank"
        if scale == "rank":
            xs = _within_group_rank(values, np.zeros(n_rows, dtype=np.int64))
            label = f"{label}: percentile rank"
        elif scale == "layer_rank":
            xs = _within_group_rank(values, groups)
            label = f"{label}: percentile rank in its tensor"
        else:
            xs = values
        rho = _spearman(xs, y, rng)  # of the quantity as drawn: with layer_rank, the pooled within-tensor ordering
        if scale == "log":
            positive = xs > 0
            floor = xs[positive].min() if positive.any() else 1.0
            xs = np.where(positive, xs, floor)  # exact zeros sit on the left edge instead of vanishing
            ax.set_xscale("log")
        for code in range(len(names)):
            rows = shown[groups[shown] == code]
            if len(rows):
                ax.scatter(xs[rows], y[rows] + jitter[groups[shown] == code], s=3, alpha=0.25, color=colors[code],
                           rasterized=True, linewidths=0)
        edges = np.unique(np.quantile(xs, np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, max(len(edges) - 2, 0))
        counts = np.bincount(which, minlength=max(len(edges) - 1, 1))
        means = np.bincount(which, weights=y, minlength=len(counts)) / np.maximum(counts, 1)
        centers = np.bincount(which, weights=xs, minlength=len(counts)) / np.maximum(counts, 1)
        keep = counts > 0
        ax.plot(centers[keep], means[keep], color="black", marker="o", markersize=3, linewidth=1.5)
        ax.set_title(f"Spearman ρ = {rho:.3f}", fontsize=10)
        ax.set_xlabel(label)
        ax.set_ylim(-0.5 / cycles, 1 + 0.5 / cycles)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("surviving score (cycles survived / E)")
    # Opaque legend markers (the points themselves are translucent).
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[i], markersize=4) for i in range(len(names))]
    handles.append(Line2D([], [], marker="o", markersize=3, color="black"))
    fig.legend(handles, [*names, "bin mean"], loc="outside right upper", fontsize=7)
    return fig


def plot_layer_survival(dataset: Any, *, log: bool = True) -> Figure:
    """Density of every tensor after each IRP cycle (``cycle_pruned > c``), with the global density dashed.

    With one global threshold, the curves show which layers IRP empties first (the large first layer of an MLP) and
    which it protects (the small last layer): the layer budgets that decide accuracy at high sparsity.

    Args:
        dataset: The surviving-score dataset of one IRP run.
        log: Logarithmic density axis.

    Returns:
        A ``Figure`` with one axis: one line per tensor plus the global line.
    """
    _single_run(dataset)
    groups, names = _encoded(dataset, "param_name")
    cols = score_columns(dataset, ["cycle_pruned", "cycles"])
    pruned = cols["cycle_pruned"].astype(np.int64)
    cycles = int(cols["cycles"].max())
    steps = np.arange(cycles + 1)
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    # For each tensor, how many weights were pruned after each cycle; survivors carry cycles + 1.
    counts = np.zeros((len(names), cycles + 2), dtype=np.int64)
    np.add.at(counts, (groups, np.clip(pruned, 0, cycles + 1)), 1)
    sizes = counts.sum(axis=1)
    # density after cycle c = share of weights whose cycle_pruned > c
    alive = sizes[:, None] - np.cumsum(counts, axis=1)[:, : cycles + 1]
    floor = 0.5 / max(int(sizes.max()), 1)  # an emptied tensor stays visible on the log axis
    for i, name in enumerate(names):
        density = alive[i] / sizes[i]
        ax.plot(steps, np.maximum(density, floor) if log else density, marker=".", label=f"{name} ({sizes[i]:,})")
    ax.plot(steps, alive.sum(axis=0) / sizes.sum(), color="black", linestyle="--", linewidth=2, label="global")
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("IRP cycle (mask after cycle c)")
    ax.set_ylabel("density (fraction kept)")
    ax.set_title("Per-tensor survival under IRP")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return fig


def plot_accuracy_vs_sparsity(
    summary: Sequence[Mapping[str, Any]],
    *,
    irp_history: Sequence[Mapping[str, Any]] | str | Path | None = None,
    full_irp_curve: bool = False,
    title: str = "",
) -> Figure:
    """Test accuracy against sparsity per pruning method, mean over seeds with a ±1 std band.

    Args:
        summary: Rows of ``experiments.summarize`` (``criterion``, ``sparsity``, ``accuracy_mean``, ``accuracy_std``)
            or raw per-seed rows (``criterion``, ``sparsity``, ``accuracy``), which are summarized first. Rows at
            sparsity 0 (the dense network) are drawn as horizontal lines.
        irp_history: Optional IRP history (``IRPCallback.history``, a run folder, ``irp_run.json`` or ``cycles.csv``)
            or ``pipeline.irp_reference`` rows: the IRP tickets are drawn as the dashed reference curve. Note that
            the IRP ticket comes from the source seed, the PaI methods from fresh ones.
        full_irp_curve: Draw every IRP ticket; by default only those from the last ticket at or below the smallest
            sparsity of the methods onwards, so the axis spans the sparsities compared.
        title: Axis title.

    Returns:
        A ``Figure`` with one axis: one line per pruning method, one per dense row, one for the IRP tickets.
    """
    rows = [dict(r) for r in summary]
    if rows and "accuracy_mean" not in rows[0]:
        from .grid import summarize

        rows = summarize(rows)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    sparse: list[float] = []
    for index, criterion in enumerate(dict.fromkeys(r["criterion"] for r in rows)):
        mine = sorted((r for r in rows if r["criterion"] == criterion), key=lambda r: r["sparsity"])
        pruned = [r for r in mine if r["sparsity"] > 0]
        if not pruned:
            for r in mine:
                ax.axhline(100 * r["accuracy_mean"], color="gray", linestyle=":", label=criterion)
            continue
        xs = [r["sparsity"] for r in pruned]
        mean = np.array([100 * r["accuracy_mean"] for r in pruned])
        std = np.array([100 * r.get("accuracy_std", 0.0) for r in pruned])
        color = f"C{index % 10}"
        ax.plot(xs, mean, marker="o", color=color, label=criterion)
        ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
        sparse.extend(xs)
    method_sparsities = list(sparse)
    if irp_history is not None:
        tickets = load_irp_history(irp_history)
        key = "eval_accuracy" if any("eval_accuracy" in t for t in tickets) else "accuracy"
        tickets = sorted((t for t in tickets if t.get(key) is not None and t["sparsity"] > 0),
                         key=lambda t: t["sparsity"])
        if sparse and not full_irp_curve:
            below = [t["sparsity"] for t in tickets if t["sparsity"] <= min(sparse)]
            start = max(below) if below else min(sparse)
            tickets = [t for t in tickets if t["sparsity"] >= start]
        if tickets:
            ax.plot([t["sparsity"] for t in tickets], [100 * t[key] for t in tickets], color="black", linestyle="--",
                    marker="*", label="IRP ticket (source seed)")
            sparse.extend(t["sparsity"] for t in tickets)
    logit_sparsity_axis(ax, sparse, ticks=method_sparsities)
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
