"""The whole AutoSparse pipeline in one resumable call: IRP -> score dataset -> AutoS -> prune fresh networks.

AutoSparse (Liu et al. 2024, arXiv 2408.14757): one IRP run labels every weight of one network with its surviving
score, a predictor learns the score from features at initialization, and the predictor prunes new networks (fresh
seeds, never the IRP source's initialization) before training. Every pruned network, of every criterion, trains
with the same recipe; the table reports final-epoch test accuracy, mean and standard deviation over seeds, next to
the IRP ticket at the nearest density as the reference PaI tries to reach.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import yaml

from ..irp import IRPConfig
from ..irp.runner import IRPRunArguments, irp_run_complete, run_irp
from ..predictor.training import AutoSTrainingArguments, metrics_markdown, train_autos
from ..records import RUN_DIR, nearest_ticket, read_run_info
from ..training import TrainRecipe
from .arguments import PaIGridConfig, PipelineArguments
from .grid import markdown_table, run_pai_grid, summarize


def run_pipeline(args: PipelineArguments, irp_config: IRPConfig, recipe: TrainRecipe) -> dict[str, Any]:
    """Run every stage that has not finished yet; write ``summary.md`` and ``accuracy.png`` in ``output_dir``."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_config.json").write_text(json.dumps(pipeline_config_dict(args, irp_config, recipe), indent=2))
    irp_dir = out / "irp_run"
    run = IRPRunArguments(
        model=args.model, task=args.task, seed=args.irp_seed, output_dir=str(irp_dir), disable_tqdm=args.disable_tqdm
    )
    history: list[dict[str, Any]]
    if irp_run_complete(irp_dir):
        history = read_run_info(irp_dir)["history"]
    else:
        history = run_irp(run, irp_config, recipe).history
    predictor_dir = out / "autos"
    metrics_file = predictor_dir / "metrics.json"
    if metrics_file.is_file():
        report = json.loads(metrics_file.read_text())
    else:
        _, report = train_autos(autos_arguments(args, irp_dir / RUN_DIR, predictor_dir))
    grid = PaIGridConfig(
        model=args.model,
        task=args.task,
        criteria=list(args.criteria),
        sparsities=list(args.sparsities),
        seeds=list(args.seeds),
        predictor=str(predictor_dir),
        output_dir=str(out / "grid"),
    )
    rows = run_pai_grid(grid, recipe)
    summary = summarize(rows)
    tickets = irp_reference(history, args.sparsities)
    text = summary_markdown(args, summary, tickets, report)
    (out / "summary.md").write_text(text)
    plot_accuracy(summary, tickets, out / "accuracy.png", title=f"{args.model} on {args.task}")
    return {"summary": summary, "irp_tickets": tickets, "autos_report": report, "text": text}


def irp_reference(history: list[dict[str, Any]], sparsities: list[float]) -> list[dict[str, float]]:
    """The trained IRP ticket nearest each target sparsity (the lottery-ticket reference)."""
    result = []
    for s in sparsities:
        row = nearest_ticket(history, s)
        result.append({"target_sparsity": s, "sparsity": row["sparsity"], "accuracy": row.get("eval_accuracy")})
    return result


def summary_markdown(
    args: PipelineArguments, summary: list[dict[str, Any]], tickets: list[dict[str, float]], report: dict[str, Any]
) -> str:
    ticket_rows = "\n".join(
        f"| {100 * t['target_sparsity']:g}% | {100 * t['sparsity']:.2f}% | {100 * (t['accuracy'] or float('nan')):.2f} |"
        for t in tickets
    )
    return f"""# AutoSparse pipeline: {args.model} on {args.task}

IRP source seed {args.irp_seed}; pruned networks use fresh seeds {args.seeds}. Test accuracy (%) after the same
training recipe, mean ± std over seeds.

{markdown_table(summary)}

## IRP tickets (source seed, nearest density)

| target sparsity | ticket sparsity | accuracy |
|---:|---:|---:|
{ticket_rows}

## AutoS predictor on held-out weights ({report['eval_rows']} rows: {', '.join(report['eval_tensors'])})

{metrics_markdown(report['metrics'])}
"""


def plot_accuracy(summary: list[dict[str, Any]], tickets: list[dict[str, float]], path: Path, title: str) -> None:
    """Write accuracy versus sparsity per criterion (band: std over seeds) with the IRP tickets to ``path``."""
    from .plots import plot_accuracy_vs_sparsity

    valid = [t for t in tickets if t.get("accuracy") is not None]
    figure = plot_accuracy_vs_sparsity(summary, irp_history=valid or None, title=title)
    figure.savefig(path, dpi=120)


def autos_arguments(args: PipelineArguments, score_dataset: Path, output_dir: Path) -> AutoSTrainingArguments:
    """The predictor's training arguments: ``autos_config``'s fields (or the defaults), on this run's scores."""
    values: dict[str, Any] = {}
    if args.autos_config:
        path = Path(args.autos_config)
        if not path.is_file():
            raise FileNotFoundError(f"autos_config {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in fields(AutoSTrainingArguments)}
        unknown = sorted(set(values) - known)
        if not isinstance(values, dict) or unknown:
            raise ValueError(f"{path} must map AutoSTrainingArguments fields to values; unknown keys {unknown}")
    values.update(
        score_datasets=[str(score_dataset)], output_dir=str(output_dir), seed=args.irp_seed, disable_tqdm=args.disable_tqdm
    )
    return AutoSTrainingArguments(**values)


def pipeline_config_dict(args: PipelineArguments, irp_config: IRPConfig, recipe: TrainRecipe) -> dict[str, Any]:
    return {"pipeline": asdict(args), "irp": irp_config.to_dict(), "recipe": recipe.to_dict()}
