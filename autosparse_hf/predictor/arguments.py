"""The arguments of ``recipes/train_autos.py``: what to train the AutoS predictor on, how, and where it goes.

This module imports nothing heavy (the checks import what they need), so that the recipe's ``--help`` is fast;
``train_autos`` (``predictor/training.py``) runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..hub import check_push_request


@dataclass
class AutoSTrainingArguments:
    """What to train on and how.

    The defaults are the library's measured default (BENCHMARKS.md, issue-5/7 ablations): a per-weight MLP over the
    default features on the density-conditioned membership target with layer-balanced BCE, a learned layer-budget
    model, and iterative SynFlow ranking inside the learned budgets at prune time (``within_layer="snip"`` ties it
    in-distribution and loses on transfer). The paper's setup (arXiv 2408.14757: surviving score, MSE,
    raw ``w0``/``g0``, one global threshold) is ``target="survival", feature_set="paper", budgets="none",
    balance_layers=False, within_layer="predictor"`` (``recipes/configs/ablation/paper.yaml``); trained on one run it
    can empty a whole layer at high sparsity.
    """

    score_datasets: list[str] = field(
        default_factory=lambda: ["outputs/irp/irp"],
        metadata={"help": "Score datasets: save_to_disk folders, IRP run folders, .parquet files or Hub ids."},
    )
    output_dir: str = field(default="outputs/autos", metadata={"help": "Where the predictor and metrics go."})
    architecture: str = field(default="mlp", metadata={"help": "mlp, paper_fc or paper_resnet18."})
    feature_set: str = field(default="default", metadata={"help": "default, paper, weight or gradient."})
    hidden_sizes: list[int] = field(default_factory=lambda: [32, 32], metadata={"help": "Hidden widths (mlp)."})
    loss: str = field(
        default="auto",
        metadata={"help": "auto (mse for survival, bce for membership), mse, bce or ranking (pairwise, in a tensor)."},
    )
    target: str = field(
        default="membership",
        metadata={"help": "membership (in the IRP mask at density d) or survival (cycles survived / cycles, paper)."},
    )
    budgets: str = field(
        default="learned", metadata={"help": "learned (fit a layer-budget model on IRP) or none (selection decides)."}
    )
    samples_per_row: int = field(default=4, metadata={"help": "Membership target: densities sampled per weight."})
    balance_layers: bool = field(default=True, metadata={"help": "Weight rows so every tensor counts alike."})
    budget_ridge: float = field(default=1e-2, metadata={"help": "Ridge penalty of the layer-budget model."})
    within_layer: str = field(
        default="synflow", metadata={"help": "Ranking inside a tensor at prune time: synflow, snip or predictor."}
    )
    epochs: float = field(default=10.0, metadata={"help": "Epochs over the training rows."})
    batch_size: int = field(default=4096, metadata={"help": "Rows per optimizer step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    eval_split: str = field(default="auto", metadata={"help": "auto, runs or layers (whole held-out units)."})
    eval_runs: list[str] = field(default_factory=list, metadata={"help": "Run ids to hold out (eval_split=runs)."})
    eval_layers: list[str] = field(default_factory=list, metadata={"help": "Tensors to hold out (layers)."})
    max_train_rows: int | None = field(default=None, metadata={"help": "Subsample training rows (paper_resnet18)."})
    seed: int = field(default=0, metadata={"help": "Seed of initialization, sampling and shuffling."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide progress bars."})
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Push the trained predictor (weights, config, card, metrics) to the Hub as hub_model_id "
                  "(as TrainingArguments does)."},
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub model repo of the predictor (org/name)."})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Make the Hub repo private."})

    def __post_init__(self) -> None:
        # A push that cannot happen fails first, before anything heavy is even imported (an offline request fails in
        # the first second); a typo fails before loading and featurizing millions of rows, not after.
        check_push_request(
            self.push_to_hub, self.hub_model_id, repo_kind="Hub model repo", example="me/autos-predictor"
        )
        from ..features import feature_names
        from .configuration import ARCHITECTURES, LOSSES, TARGETS, WITHIN_LAYER

        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {ARCHITECTURES}")
        if self.loss == "auto":
            self.loss = "mse" if self.target == "survival" else "bce"
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; choose one of {TARGETS}")
        if self.budgets not in ("none", "learned"):
            raise ValueError(f"budgets must be none or learned, got {self.budgets!r}")
        if self.within_layer not in WITHIN_LAYER:
            raise ValueError(f"unknown within_layer {self.within_layer!r}; choose one of {WITHIN_LAYER}")
        if (self.target, self.loss) in (("survival", "bce"), ("membership", "mse")):
            raise ValueError(
                f"loss {self.loss!r} does not fit target {self.target!r} (survival: mse or ranking; membership: bce "
                "or ranking; loss='auto' picks)"
            )
        if self.samples_per_row < 1:
            raise ValueError(f"samples_per_row must be >= 1, got {self.samples_per_row}")
        feature_names(self.feature_set)
        if self.eval_split not in ("auto", "runs", "layers"):
            raise ValueError(f"eval_split must be auto, runs or layers, got {self.eval_split!r}")
        if not self.epochs > 0 or self.batch_size < 1:
            raise ValueError(f"epochs must be > 0 and batch_size >= 1, got {self.epochs} and {self.batch_size}")
