"""Quality benchmark: methods x sparsities x seeds x targets, one recipe, resumable, with paired differences.

Every target trains every method with one identical :class:`~autosparse_hf.training.TrainRecipe` and reports the
final-epoch test accuracy (never the best test epoch), mean and standard deviation over seeds, and for each method
the paired per-seed difference to the best baseline (handcrafted or strong, ``BASELINES``) at that sparsity. The AutoS
predictor and the IRP source come from one run (the paper's claim is that one IRP run serves all targets); in-distribution targets use
fresh seeds only, never the source's.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..records import nearest_ticket, read_run_info
from ..training import TrainRecipe
from .grid import (
    PaIGridConfig,
    layer_table,
    markdown_table,
    method_sparsity_table,
    parse_method,
    run_pai_grid,
    summarize,
)

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
HANDCRAFTED = ("random", "random@erk", "magnitude", "snip", "grasp", "synflow")
# The strongest published pruning-at-initialization methods: progressive (Iter SNIP, FORCE), meta-gradient (ProsPr)
# and data-free NTK-based (NTK-SAP). AutoS is compared with the best of all baselines at each sparsity.
STRONG_BASELINES = ("iter_snip", "force", "prospr", "ntksap")
BASELINES = (*HANDCRAFTED, *STRONG_BASELINES)


@dataclass
class BenchmarkTarget:
    """One target network and task."""

    name: str
    model: str
    task: str
    kind: str = "in-distribution"
    methods: list[str] | None = None
    seeds: list[int] | None = None
    sparsities: list[float] | None = None
    epochs: float | None = None
    irp_reference: bool = False
    irp_reference_seeds: list[int] | None = None
    source_reference: bool = False


@dataclass
class BenchmarkConfig:
    """A benchmark: one IRP source and predictor, several targets (YAML: ``recipes/configs/benchmark_*.yaml``)."""

    output_dir: str = "outputs/benchmark"
    source_irp: str = "outputs/autosparse/irp_run/irp"
    predictor: str | None = "outputs/autosparse/autos"
    extra_predictors: dict[str, str] = field(default_factory=dict)
    methods: list[str] = field(default_factory=lambda: [*BASELINES, "autos"])
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.9, 0.95, 0.98, 0.99])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    targets: list[BenchmarkTarget] = field(
        default_factory=lambda: [BenchmarkTarget(name="lenet-mnist", model="lenet300100", task="mnist")]
    )
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    source_seed: int = 0

    @classmethod
    def from_yaml(cls, path: str | Path) -> BenchmarkConfig:
        """Load a config; unknown keys are errors that name the key."""
        raw = yaml.safe_load(Path(path).read_text()) or {}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path} has unknown keys {unknown}")
        targets = [BenchmarkTarget(**t) for t in raw.pop("targets", [])] or None
        recipe = TrainRecipe(**raw.pop("recipe", {}))
        config = cls(**raw, recipe=recipe)
        if targets:
            config.targets = targets
        return config

    def validate(self) -> None:
        names = [target.name for target in self.targets]
        for name in names:
            # Target names become folder names: nothing that could leave the output folder or collide.
            if not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
                raise ValueError(f"target name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"target names {duplicates} appear more than once")
        for target in self.targets:
            seeds = target.seeds or self.seeds
            if target.kind == "in-distribution" and self.source_seed in seeds:
                raise ValueError(
                    f"target {target.name}: seeds {seeds} include the IRP source seed {self.source_seed}; use fresh seeds"
                )


def _predictor_for(label: str, config: BenchmarkConfig) -> str | None:
    """The predictor of an ``autos*`` method or of a method inside ``learned`` budgets (``force@learned``: FORCE
    inside the predictor's layer budgets): ``extra_predictors[label without @budgets]``, else the default one."""
    method = parse_method(label)
    if not method.criterion.startswith("autos") and method.budgets != "learned":
        return None
    return config.extra_predictors.get(label.partition("@")[0], config.predictor)


def run_benchmark(config: BenchmarkConfig, only: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) every target; write per-target tables and plots and ``report.md``."""
    config.validate()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark_config.json").write_text(json.dumps(asdict(config), indent=2))
    sections = []
    results = {}
    for target in config.targets:
        if only and target.name not in only:
            continue
        recipe = TrainRecipe(**{**config.recipe.to_dict(), **({"epochs": target.epochs} if target.epochs else {})})
        methods = target.methods or config.methods
        rows = []
        # Each predictor variant (autos, autos_paper, ablations) is its own grid: the grid loads one predictor.
        groups: dict[str | None, list[str]] = {}
        for label in methods:
            groups.setdefault(_predictor_for(label, config), []).append(label)
        for predictor, labels in groups.items():
            grid = PaIGridConfig(
                model=target.model,
                task=target.task,
                criteria=labels,
                sparsities=list(target.sparsities or config.sparsities),
                seeds=list(target.seeds or config.seeds),
                include_dense=predictor is None,
                predictor=predictor,
                ticket_source=config.source_irp,
                output_dir=str(out / target.name / _grid_name(predictor, config)),
            )
            rows += run_pai_grid(grid, recipe)
        references = irp_references(config, target, recipe) if target.irp_reference else []
        if target.source_reference:
            references += source_references(config, target)
        results[target.name] = {"rows": rows, "references": references}
        sections.append(target_section(target, rows, references, out / target.name))
    report = "\n\n".join(sections)
    (out / "report.md").write_text(report + "\n")
    return {"results": results, "report": report}


def _grid_name(predictor: str | None, config: BenchmarkConfig) -> str:
    if predictor is None:
        return "grid"
    names = {v: k for k, v in config.extra_predictors.items()}
    return f"grid-{names.get(predictor, 'autos')}".replace("/", "-")  # one folder per predictor, never nested


def reference_densities(sparsities: list[float]) -> list[float]:
    """The default IRP schedule's densities (20 equal-count cycles to 1%) plus every benchmark density it lacks,
    strictly decreasing: an IRP run on this schedule has a ticket at exactly each benchmark sparsity."""
    from ..irp import IRPConfig

    default = IRPConfig()
    step = default.final_sparsity / default.cycles
    densities = {round(1.0 - (c + 1) * step, 10) for c in range(default.cycles)}
    densities |= {round(1.0 - s, 10) for s in sparsities if 0.0 < s < 1.0}
    return sorted(densities, reverse=True)


def irp_references(config: BenchmarkConfig, target: BenchmarkTarget, recipe: TrainRecipe) -> list[dict[str, Any]]:
    """IRP tickets of the target's own seeds (the lottery-ticket reference), resumable.

    The IRP schedule is the default one (20 equal-count cycles to 99%) with a cycle added at every benchmark
    sparsity it lacks, so each PaI sparsity has a ticket at exactly its density.
    """
    from ..irp import IRPConfig
    from ..irp.runner import IRPRunArguments, irp_run_complete, run_irp

    irp_config = IRPConfig(densities=reference_densities(target.sparsities or config.sparsities))
    rows = []
    for seed in target.irp_reference_seeds or target.seeds or config.seeds:
        folder = Path(config.output_dir) / target.name / f"irp-seed{seed}"
        if irp_run_complete(folder):
            history = read_run_info(folder)["history"]
        else:
            run = IRPRunArguments(
                model=target.model, task=target.task, seed=seed, output_dir=str(folder), disable_tqdm=True
            )
            history = run_irp(run, irp_config, recipe).history
        for s in target.sparsities or config.sparsities:
            nearest = nearest_ticket(history, s)
            rows.append(
                {"criterion": "irp-ticket", "sparsity": s, "seed": seed, "ticket_sparsity": nearest["sparsity"],
                 "accuracy": nearest.get("eval_accuracy")}
            )
    return rows


def source_references(config: BenchmarkConfig, target: BenchmarkTarget) -> list[dict[str, Any]]:
    """The source run's own trained IRP tickets at the nearest densities (one seed: the source's)."""
    history = read_run_info(config.source_irp)["history"]
    rows = []
    for s in target.sparsities or config.sparsities:
        nearest = nearest_ticket(history, s)
        rows.append({"criterion": "irp-ticket (source seed)", "sparsity": s, "seed": config.source_seed,
                     "ticket_sparsity": nearest["sparsity"], "accuracy": nearest.get("eval_accuracy")})
    return rows


def paired_differences(rows: list[dict[str, Any]], baselines: tuple[str, ...] = BASELINES) -> list[dict[str, Any]]:
    """Per method and sparsity: accuracy minus the best baseline (by mean) of that sparsity, paired by seed."""
    by: dict[tuple[str, float], dict[int, float]] = {}
    for r in rows:
        if r.get("accuracy") is not None:
            by.setdefault((r["criterion"], r["sparsity"]), {})[r["seed"]] = r["accuracy"]
    result = []
    for s in sorted({k[1] for k in by if k[1] > 0}):
        candidates = [(m, v) for (m, sp), v in by.items() if sp == s and m in baselines]
        if not candidates:
            continue
        best, best_acc = max(candidates, key=lambda mv: statistics.fmean(mv[1].values()))
        for (method, sp), accs in by.items():
            if sp != s or method == best:
                continue
            seeds = sorted(set(accs) & set(best_acc))
            diffs = [accs[x] - best_acc[x] for x in seeds]
            if not diffs:
                continue
            result.append(
                {
                    "method": method,
                    "sparsity": s,
                    "best_baseline": best,
                    "n": len(diffs),
                    "diff_mean": statistics.fmean(diffs),
                    "diff_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                }
            )
    return result


def paired_table(diffs: list[dict[str, Any]]) -> str:
    cells = {(d["method"], d["sparsity"]): d for d in diffs}
    best = {d["sparsity"]: d["best_baseline"] for d in diffs}

    def cell(m: str, s: float) -> str:
        d = cells.get((m, s))
        return f"{100 * d['diff_mean']:+.2f} ± {100 * d['diff_std']:.2f}" if d else ""

    return method_sparsity_table(
        list(dict.fromkeys(d["method"] for d in diffs)),
        sorted(best),
        cell,
        header=lambda s: f"{100 * s:g}% (vs {best[s]})",
        first="method",
    )


def target_section(target: BenchmarkTarget, rows: list[dict[str, Any]], references: list[dict[str, Any]], folder: Path) -> str:
    from .pipeline import plot_accuracy

    summary = summarize(rows + [r for r in references if r["accuracy"] is not None])
    plot_accuracy(summary, [], folder / "accuracy.png", title=f"{target.name} ({target.kind})")
    diffs = paired_differences(rows + references)
    high = [r for r in rows if r["sparsity"] in (0.98, 0.99)]
    ref_note = ""
    if references:
        parts = []
        for label, what in (
            ("irp-ticket", "the trained IRP ticket of the same seed (an IRP run per seed whose schedule has a cycle at "
             "every benchmark density)"),
            ("irp-ticket (source seed)", "the source run's own trained ticket (one seed, no spread) at the nearest "
             "density of its schedule"),
        ):
            refs = [r for r in references if r["criterion"] == label]
            if refs:
                pairs = sorted({(r["sparsity"], r["ticket_sparsity"]) for r in refs})
                parts.append(f"`{label}` is {what}: " + ", ".join(f"{100 * s:g}% -> {100 * t:.2f}%" for s, t in pairs))
        ref_note = "\nReferences: " + "; ".join(parts) + ".\n"
    return f"""### {target.name}: {target.model} on {target.task} ({target.kind})

Test accuracy (%), mean ± std over seeds {sorted({r['seed'] for r in rows})}.
{ref_note}
{markdown_table(summary)}

Paired difference to the best baseline (of those in the grid) at each sparsity (percentage points, mean ± std over seeds):

{paired_table(diffs)}

Per-layer density at 98% and 99% (first seed):

{layer_table(high)}

Plot: `{folder / 'accuracy.png'}`"""
