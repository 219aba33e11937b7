"""Per-cycle IRP results: the lottery-ticket accuracy-versus-density table (CSV, Markdown) and plot (PNG).

Part of the IRP run folder (``IRPRecord`` writes ``cycles.csv``, ``cycles.md`` and ``cycles.png``). The figure is
built without ``pyplot`` (no global state, safe under any backend); the study plots reuse its sparsity axis.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from .layout import RUN_FILE


def cycle_table_markdown(history: list[dict[str, Any]]) -> str:
    """One row per trained ticket: cycle, density, sparsity and every evaluation metric."""
    if not history:
        return ""
    metric_keys = [k for k in history[0] if k.startswith("eval_") and k not in ("eval_runtime",)]
    metric_keys = [k for k in metric_keys if "per_second" not in k]
    header = "| cycle | density | sparsity | " + " | ".join(k.removeprefix("eval_") for k in metric_keys) + " |"
    lines = [header, "|---:|---:|---:|" + "---:|" * len(metric_keys)]
    for row in history:
        values = " | ".join(f"{row.get(k, float('nan')):.4f}" for k in metric_keys)
        lines.append(f"| {row['cycle']} | {row['density']:.4f} | {row['sparsity']:.4f} | {values} |")
    return "\n".join(lines)


def write_cycle_report(info: dict[str, Any], folder: Path) -> None:
    """Write ``cycles.csv``, ``cycles.md`` and, when accuracy was evaluated, ``cycles.png``."""
    history = info["history"]
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    with (folder / "cycles.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    (folder / "cycles.md").write_text(cycle_table_markdown(history) + "\n")
    metric = next((k for k in ("eval_accuracy", "eval_loss") if k in history[0]), None)
    if metric is None:
        return
    identity = info.get("identity", {})
    title = f"IRP tickets: {identity.get('model', '')} on {identity.get('task', '')}"
    plot_irp_curve(history, metric=metric, title=title).savefig(folder / "cycles.png", dpi=120)


def percent_formatter(fraction: bool = True) -> FuncFormatter:
    def fmt(value: float, _pos: int) -> str:
        percent = 100 * value if fraction else value
        return f"{percent:.3g}%"

    return FuncFormatter(fmt)


def logit_sparsity_axis(ax: Any, values: Sequence[float], ticks: Sequence[float] = ()) -> None:
    """Sparsities in (0, 1) on a logit axis: 90%, 99% and 99.9% are equally far apart, as their densities are.

    ``ticks`` (at most 8 distinct values) replace the automatic ticks, e.g. the sparsities a comparison ran at.
    """
    if values and all(0.0 < v < 1.0 for v in values):
        ax.set_xscale("logit")
        ax.xaxis.set_minor_formatter(NullFormatter())
    distinct = sorted(set(ticks))
    if 0 < len(distinct) <= 8:
        ax.set_xticks(distinct)
    ax.xaxis.set_major_formatter(percent_formatter())
    ax.set_xlabel("sparsity")


def load_irp_history(source: Sequence[Mapping[str, Any]] | str | Path) -> list[dict[str, Any]]:
    """The per-cycle history of an IRP run: a list of dicts, or read from a run folder, ``irp_run.json`` or
    ``cycles.csv`` (numbers parsed)."""
    if not isinstance(source, (str, Path)):
        return [dict(row) for row in source]
    path = Path(source)
    if path.is_dir():
        path = path / RUN_FILE if (path / RUN_FILE).is_file() else path / "cycles.csv"
    if path.suffix == ".json":
        return list(json.loads(path.read_text())["history"])
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    raise ValueError(f"{source} is neither an IRP run folder, an irp_run.json nor a cycles.csv")


def _number(text: str) -> Any:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def plot_irp_curve(
    history: Sequence[Mapping[str, Any]] | str | Path, *, metric: str = "eval_accuracy", title: str = ""
) -> Figure:
    """The IRP run cycle by cycle: the trained ticket's ``metric`` against sparsity (the lottery-ticket curve), and
    the density each cycle trained at.

    Args:
        history: ``IRPCallback.history``, or a run folder / ``irp_run.json`` / ``cycles.csv``.
        metric: The evaluated metric to plot (``eval_accuracy``; ``eval_loss`` for runs without accuracy).
        title: Figure title.

    Returns:
        A ``Figure`` with two axes: metric vs sparsity, and density vs cycle.
    """
    rows = load_irp_history(history)
    if not rows:
        raise ValueError("the IRP history is empty")
    if not any(metric in r for r in rows):
        raise ValueError(f"no {metric!r} in the IRP history (was evaluate_cycles on?); keys: {sorted(rows[0])}")
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    evaluated = [r for r in rows if metric in r]
    scale_rows = [r for r in evaluated if r["sparsity"] > 0]
    dense = [r for r in evaluated if r["sparsity"] <= 0]
    scale_percent = metric.endswith("accuracy")
    factor = 100.0 if scale_percent else 1.0
    left.plot([r["sparsity"] for r in scale_rows], [factor * r[metric] for r in scale_rows], marker="o",
              label="IRP ticket")
    for r in dense:
        left.axhline(factor * r[metric], color="gray", linestyle=":", label="dense (cycle 1)")
    logit_sparsity_axis(left, [r["sparsity"] for r in scale_rows])
    left.set_ylabel(metric.removeprefix("eval_") + (" (%)" if scale_percent else ""))
    left.set_title("trained ticket after each cycle")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.plot([r["cycle"] for r in rows], [r["density"] for r in rows], marker="o", color="C1")
    right.set_yscale("log")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("IRP cycle")
    right.set_ylabel("density trained in the cycle")
    right.set_title("density schedule")
    right.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    return fig
