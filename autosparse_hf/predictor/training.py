"""Train an AutoS predictor on surviving-score datasets with the Hugging Face ``Trainer``."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from ..features import with_density
from ..hub import push_folder
from ..records.score_io import check_score_dataset, load_score_datasets
from .arguments import AutoSTrainingArguments
from .budgets import fit_budget_model
from .card import predictor_card
from .configuration import AutoSConfig
from .data import ScoreTable, score_table, split_rows
from .loading import check_finite_predictor
from .metrics import DEFAULT_DENSITIES, ranking_metrics
from .modeling import AutoSModel

logger = logging.getLogger(__name__)

# What train_autos writes and pushes (push_to_hub): the predictor, its card, the held-out metrics, the loss curve.
PREDICTOR_FILES: tuple[str, ...] = ("config.json", "model.safetensors", "README.md", "metrics.json", "loss_curve.png")


class ChunkDataset(torch.utils.data.Dataset):
    """Rows served as ready-made batches: one item is ``batch_size`` rows (a fixed random partition).

    Collating row by row would dominate the cost for millions of rows; the Trainer shuffles the chunks each epoch.
    """

    def __init__(self, examples: TrainingExamples, batch_size: int, shuffle: bool, seed: int) -> None:
        n = len(examples.labels)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        self.examples = examples
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] == 1:
            # A one-row batch breaks batch norm in training mode (paper_fc, paper_resnet18): fold it into the previous.
            starts.pop()
        bounds = [*starts, n]
        self.chunks = [torch.from_numpy(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rows = self.chunks[i]
        e = self.examples
        return {"features": e.features[rows], "labels": e.labels[rows], "group": e.group[rows], "weight": e.weight[rows]}


@dataclass
class TrainingExamples:
    """Inputs, labels, tensor ids and loss weights of the training examples."""

    features: torch.Tensor
    labels: torch.Tensor
    group: torch.Tensor
    weight: torch.Tensor


def _layer_weights(group: np.ndarray, balance: bool) -> torch.Tensor:
    if not balance:
        return torch.ones(len(group))
    counts = np.bincount(group)
    weight = 1.0 / counts[group]
    return torch.from_numpy((weight / weight.mean()).astype(np.float32))


def survival_examples(table: ScoreTable, balance_layers: bool = False) -> TrainingExamples:
    """One example per weight: its features and surviving score (the paper's target)."""
    return TrainingExamples(
        features=table.features,
        labels=torch.from_numpy(table.surviving_score),
        group=torch.from_numpy(table.group),
        weight=_layer_weights(table.group, balance_layers),
    )


def membership_examples(
    table: ScoreTable, samples_per_row: int, seed: int, balance_layers: bool = True
) -> TrainingExamples:
    """``samples_per_row`` examples per weight: (features, log d_c) -> is the weight in the IRP mask after cycle c.

    Cycles are drawn with probability proportional to ``d_c ** -0.5`` (d_c: the run's density after cycle c), so
    the high sparsities that decide accuracy are seen more often than the nearly dense first cycles.
    """
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(len(table)), samples_per_row)
    cycle = np.empty(len(rows), dtype=np.int64)
    log_density = np.empty(len(rows), dtype=np.float32)
    for rid, dens in table.densities.items():
        in_run = np.nonzero(table.run_id[rows] == rid)[0]
        densities = np.asarray(dens[1:], dtype=np.float64)  # after cycles 1..E
        p = densities**-0.5
        picked = rng.choice(len(densities), size=len(in_run), p=p / p.sum()) + 1
        cycle[in_run] = picked
        log_density[in_run] = np.log(np.asarray(dens)[picked]).astype(np.float32)
    labels = (table.cycle_pruned[rows] > cycle).astype(np.float32)
    features = torch.cat([table.features[torch.from_numpy(rows)], torch.from_numpy(log_density)[:, None]], dim=1)
    group = table.group[rows]
    return TrainingExamples(
        features=features,
        labels=torch.from_numpy(labels),
        group=torch.from_numpy(group),
        weight=_layer_weights(group, balance_layers),
    )


def _single_chunk(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return items[0]


def baseline_scores(table: ScoreTable) -> dict[str, np.ndarray]:
    """Magnitude (|w0|) and SNIP (|w0 g0|, g0 averaged over the same batches) on the same rows."""
    return {"magnitude": np.abs(table.w0), "snip": np.abs(table.w0 * table.g0)}


def evaluate_predictor(model: AutoSModel, table: ScoreTable) -> dict[str, float]:
    """Held-out metrics of ``model`` next to the magnitude and SNIP baselines.

    A membership predictor is asked at each density for the overlap there, and at 5% for the Spearman correlation.
    """
    survivors = {d: table.survivors_at(d) for d in DEFAULT_DENSITIES}
    if model.config.target == "survival":
        predictions = model.predict(table.features).numpy()
        return ranking_metrics(predictions, table.surviving_score, survivors, baseline_scores(table))
    result = ranking_metrics(
        model.predict(with_density(table.features, 0.05)).numpy(), table.surviving_score, {}, baseline_scores(table)
    )
    for d, rows in survivors.items():
        at_d = ranking_metrics(model.predict(with_density(table.features, d)).numpy(), table.surviving_score,
                               {d: rows}, baseline_scores(table))
        result.update({k: v for k, v in at_d.items() if "overlap" in k})
    return result


def train_autos(
    args: AutoSTrainingArguments, dataset: Dataset | None = None
) -> tuple[AutoSModel, dict[str, Any]]:
    """Load the score datasets, split by whole runs or tensors, train, evaluate, save; returns model and report.

    Writes ``output_dir``: the predictor (``config.json`` + ``model.safetensors``), ``metrics.json`` (held-out
    Spearman and top-k overlaps for AutoS, magnitude and SNIP, plus the split), ``README.md`` (the model card) and
    ``loss_curve.png``; with ``args.push_to_hub``, uploads these files to ``args.hub_model_id`` after writing them.

    Args:
        args: What to train and how.
        dataset: A score ``datasets.Dataset`` already in memory (e.g. ``IRPCallback.score_dataset()`` or
            ``concatenate_datasets`` of several runs); when given, ``args.score_datasets`` is not read.
    """
    torch.manual_seed(args.seed)
    from_memory = dataset is not None
    if dataset is None:
        dataset = load_score_datasets(args.score_datasets)
    elif not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset of surviving scores, got {type(dataset).__name__}")
    else:
        # The checks a dataset loaded from disk passes (schema version, finite values, consistent targets).
        check_score_dataset(dataset, "the in-memory dataset given to train_autos")
    table = score_table(dataset, args.feature_set)
    train_rows, eval_rows = split_rows(table, args.eval_split, args.eval_runs, args.eval_layers)
    if args.max_train_rows and len(train_rows) > args.max_train_rows:
        rng = np.random.default_rng(args.seed)
        train_rows = np.sort(rng.choice(train_rows, args.max_train_rows, replace=False))
    train, held = table.subset(train_rows), table.subset(eval_rows)
    feature_num_batches = _feature_num_batches(dataset)
    budget_model = None
    if args.budgets == "learned":
        # Fitted on whole runs of the training side (every tensor of them): budgets are per-tensor facts.
        train_runs = sorted(set(train.run_id.tolist()))
        budget_model = fit_budget_model(
            table.subset(np.nonzero(np.isin(table.run_id, train_runs))[0]).budget_runs(), ridge=args.budget_ridge
        )
    config = AutoSConfig(
        architecture=args.architecture,
        feature_set=args.feature_set,
        hidden_sizes=args.hidden_sizes,
        loss=args.loss,
        target=args.target,
        budget_model=budget_model,
        within_layer=args.within_layer,
        feature_num_batches=feature_num_batches,
        training_sources=sorted(set(train.run_id.tolist())),
    )
    if args.target == "membership":
        examples = membership_examples(train, args.samples_per_row, args.seed, args.balance_layers)
    else:
        examples = survival_examples(train, args.balance_layers)
    model = AutoSModel(config)
    model.set_feature_statistics(examples.features.mean(0), examples.features.std(0))
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=1,
        per_device_eval_batch_size=1,
        learning_rate=args.learning_rate,
        optim="adamw_torch",
        weight_decay=0.0,
        lr_scheduler_type="constant",
        logging_steps=max(1, len(examples.labels) // args.batch_size // 4),
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=args.seed,
        remove_unused_columns=False,
        disable_tqdm=args.disable_tqdm,
        dataloader_pin_memory=torch.cuda.is_available(),
        average_tokens_across_devices=False,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=ChunkDataset(examples, args.batch_size, shuffle=True, seed=args.seed),
        data_collator=_single_chunk,
    )
    trainer.train()
    model = trainer.model
    # Non-finite inputs or a diverging run leave NaN/inf weights; refuse before evaluating or saving anything.
    check_finite_predictor(model, f"the predictor trained for {args.output_dir} (nothing saved)")
    report: dict[str, Any] = {
        "eval_split": args.eval_split,
        "train_rows": int(len(train)),
        "eval_rows": int(len(held)),
        "eval_runs": sorted(set(held.run_id.tolist())),
        "eval_tensors": sorted(set(held.param_name.tolist())),
        "metrics": evaluate_predictor(model, held),
        "budget_model": budget_model,
        # An in-memory dataset replaces score_datasets: say so instead of listing paths that were not read.
        "arguments": {**asdict(args), **({"score_datasets": "<in-memory Dataset>"} if from_memory else {})},
        "loss_history": [
            {"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e
        ],
    }
    if trainer.is_world_process_zero():
        out = Path(args.output_dir)
        model.save_pretrained(out)
        (out / "metrics.json").write_text(json.dumps(report, indent=2))
        (out / "README.md").write_text(predictor_card(model.config, report))
        _plot_loss(report["loss_history"], out / "loss_curve.png")
        if args.push_to_hub:
            # Checked at construction (repo id given, Hub online); pushed only once everything is written.
            push_folder(out, args.hub_model_id, private=args.hub_private_repo, allow_patterns=PREDICTOR_FILES,
                        commit_message="Upload AutoS predictor (autosparse_hf)")
    return model, report


def _feature_num_batches(dataset: Any) -> int:
    """Batches the score datasets' ``g0`` averaged over (4 if they do not say).

    ``concatenate_datasets`` joins the descriptions of several score datasets with blank lines, so the description
    is a sequence of JSON documents, not one; every document is read.
    """
    text = dataset.info.description or ""
    decoder = json.JSONDecoder()
    values: list[int] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        try:
            info, pos = decoder.raw_decode(text, pos)
            values.append(int(info["irp_config"]["feature_num_batches"]))
        except (ValueError, KeyError, TypeError):
            break
    if not values:
        return 4
    if len(set(values)) > 1:
        logger.warning("score datasets averaged g0 over different numbers of batches %s; using %d", values, values[0])
    return values[0]


def _plot_loss(history: list[dict[str, float]], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("AutoS training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def metrics_markdown(metrics: dict[str, float]) -> str:
    """A table: rows AutoS / magnitude / SNIP, columns Spearman and the overlaps."""
    names = ["autos", "magnitude", "snip"]
    cols = [k.split("_", 1)[1] for k in metrics if k.startswith("autos_")]
    lines = ["| scores | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{metrics.get(f'{n}_{c}', float('nan')):.4f}" for c in cols) + " |")
    return "\n".join(lines)
