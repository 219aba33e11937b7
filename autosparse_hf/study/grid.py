"""Grids of pruning-at-initialization runs: criteria x sparsities x seeds, one recipe, resumable.

Every cell builds a fresh model from its seed, prunes it at initialization with ``PaICallback`` and trains it with
the same :class:`~autosparse_hf.training.TrainRecipe`; the final-epoch test metrics and the per-layer densities are
appended to ``cells.jsonl`` as soon as a cell finishes, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..callbacks import PaICallback
from ..predictor.loading import load_predictor
from ..pruning import PruneConfig
from ..training import TrainRecipe, train_and_evaluate

# Defined in .arguments (light, for the recipes' --help); importable from here as before.
from .arguments import DEFAULT_CRITERIA, METHOD_SEPARATOR, Method, PaIGridConfig, parse_method  # noqa: F401


def method_config(label: str, sparsity: float, config: PaIGridConfig, predictor: Any = None) -> PruneConfig:
    """The ``PruneConfig`` of one grid cell: ``autos`` labels follow their predictor's recipe (its budgets and the
    ranking it was validated with), every other label is its criterion inside its budgets."""
    method = parse_method(label, config.budgets)
    if method.criterion == "autos" and method.budgets == "auto":
        return PruneConfig.from_predictor(predictor, sparsity=sparsity)
    return PruneConfig(
        criterion=method.criterion,
        sparsity=sparsity,
        budgets=method.budgets,
        num_batches=config.num_batches,
        predictor=predictor if method.criterion.startswith("autos") or method.budgets == "learned" else None,
        ticket_source=config.ticket_source,
    )


def _cell_key(criterion: str, sparsity: float, seed: int) -> str:
    return f"{criterion}|{sparsity:.6f}|{seed}"


def _read_cells(path: Path) -> dict[str, dict[str, Any]]:
    cells: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption; that cell is recomputed
            cells[_cell_key(row["criterion"], row["sparsity"], row["seed"])] = row
    return cells


def run_pai_grid(config: PaIGridConfig, recipe: TrainRecipe | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the grid and write ``cells.jsonl``, ``results.csv``, ``results.md`` and ``layers.md``."""
    from ..tasks import build_model, load_task, task_info

    recipe = recipe or TrainRecipe()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"config": asdict(config), "recipe": recipe.to_dict()}
    manifest_file = out / "grid_config.json"
    if manifest_file.is_file():
        previous = json.loads(manifest_file.read_text())
        # Cells are keyed by method, sparsity and seed; everything else that changes a cell's result must match.
        fixed = ("model", "task", "budgets", "num_batches", "task_seed", "predictor", "ticket_source")
        saved = dict(previous["config"])
        saved.setdefault("budgets", saved.get("scope"))  # grids written before the field was renamed
        changed = [k for k in fixed if saved.get(k) != manifest["config"].get(k)]
        if previous["recipe"] != manifest["recipe"]:
            changed.append("recipe")
        if changed:
            raise ValueError(
                f"{out} holds a grid made with other settings ({', '.join(changed)}; see {manifest_file}); "
                "use another output_dir"
            )
    manifest_file.write_text(json.dumps(manifest, indent=2))
    cells_file = out / "cells.jsonl"
    done = _read_cells(cells_file)
    dataset = load_task(config.task, seed=config.task_seed)
    info = task_info(config.task)
    plan = [(c, s, seed) for seed in config.seeds for s in config.sparsities for c in config.criteria]
    if config.include_dense:
        plan = [("dense", 0.0, seed) for seed in config.seeds] + plan
    # Loaded once for the whole grid (the folder is read, checked and its model built once).
    predictor = load_predictor(config.predictor) if config.predictor else None
    for label, sparsity, seed in tqdm(plan, desc="PaI grid"):
        key = _cell_key(label, sparsity, seed)
        if key in done:
            continue
        model = build_model(config.model, info, seed=seed)
        callbacks = []
        pai = None if label == "dense" else PaICallback(config=method_config(label, sparsity, config, predictor))
        if pai is not None:
            callbacks.append(pai)
        metrics = train_and_evaluate(
            model, dataset, recipe, output_dir=str(out / "trainer"), seed=seed, callbacks=callbacks
        )
        row = {
            "criterion": label,
            "sparsity": sparsity,
            "seed": seed,
            "achieved_sparsity": pai.masks.sparsity if pai else 0.0,
            "accuracy": metrics.get("accuracy", math.nan),
            "loss": metrics.get("loss", math.nan),
            "layer_density": pai.masks.layer_density() if pai else {},
        }
        with cells_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        done[key] = row
    rows = [done[_cell_key(c, s, seed)] for c, s, seed in plan]
    write_tables(rows, out)
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of accuracy over seeds per (criterion, sparsity)."""
    groups: dict[tuple[str, float], list[float]] = {}
    for row in rows:
        groups.setdefault((row["criterion"], row["sparsity"]), []).append(row["accuracy"])
    return [
        {
            "criterion": c,
            "sparsity": s,
            "n": len(v),
            "accuracy_mean": statistics.fmean(v),
            "accuracy_std": statistics.stdev(v) if len(v) > 1 else 0.0,
        }
        for (c, s), v in groups.items()
    ]


def method_sparsity_table(
    methods: Sequence[str], sparsities: Sequence[float], cell: Callable[[str, float], str],
    header: Callable[[float], str] = lambda s: f"{100 * s:g}%", first: str = "criterion",
) -> str:
    """A Markdown table with one row per method and one column per sparsity; ``cell`` renders each entry."""
    lines = [f"| {first} | " + " | ".join(header(s) for s in sparsities) + " |", "|---|" + "---:|" * len(sparsities)]
    lines += [f"| {m} | " + " | ".join(cell(m, s) for s in sparsities) + " |" for m in methods]
    return "\n".join(lines)


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """Criteria as rows, sparsities as columns, cells ``mean ± std`` of test accuracy in percent."""
    cells = {(r["criterion"], r["sparsity"]): r for r in summary}

    def cell(c: str, s: float) -> str:
        r = cells.get((c, s))
        return f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}" if r else ""

    criteria = list(dict.fromkeys(r["criterion"] for r in summary))
    return method_sparsity_table(criteria, sorted({r["sparsity"] for r in summary}), cell)


def layer_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per-layer density (first seed) for every pruned cell, one row per (criterion, sparsity)."""
    pruned = [r for r in rows if r["layer_density"]]
    if not pruned:
        return ""
    seed = pruned[0]["seed"]
    names = list(pruned[0]["layer_density"])
    lines = ["| criterion | sparsity | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for r in pruned:
        if r["seed"] != seed:
            continue
        dens = " | ".join(f"{r['layer_density'].get(n, math.nan):.4f}" for n in names)
        lines.append(f"| {r['criterion']} | {100 * r['sparsity']:g}% | {dens} |")
    return "\n".join(lines)


def write_tables(rows: Sequence[dict[str, Any]], out: Path) -> None:
    import csv

    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["criterion", "sparsity", "seed", "achieved_sparsity", "accuracy", "loss"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r[k] for k in writer.fieldnames})
    (out / "results.md").write_text(markdown_table(summarize(rows)) + "\n")
    (out / "layers.md").write_text(layer_table(rows) + "\n")
