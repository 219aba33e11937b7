"""Per-cycle IRP results: the lottery-ticket accuracy-versus-density table (CSV, Markdown) and plot (PNG)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


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
    from ..plots import plot_irp_curve

    identity = info.get("identity", {})
    title = f"IRP tickets: {identity.get('model', '')} on {identity.get('task', '')}"
    plot_irp_curve(history, metric=metric, title=title).savefig(folder / "cycles.png", dpi=120)
