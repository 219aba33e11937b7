"""The argument dataclasses of the study recipes (``recipes/prune.py``, ``recipes/autosparse.py``) and the method
labels of grids, in a module that imports nothing heavy (the checks import what they need), so that ``--help`` is fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_CRITERIA = ["random", "magnitude", "snip", "grasp", "synflow"]


@dataclass
class PaIGridConfig:
    """Which models to prune, how, and where to write."""

    model: str = field(default="lenet300100", metadata={"help": "Built-in model name or timm model name."})
    task: str = field(default="mnist", metadata={"help": "Built-in task (mnist, mnist1d, digits) or Hub dataset."})
    criteria: list[str] = field(
        default_factory=lambda: list(DEFAULT_CRITERIA),
        metadata={"help": "Methods: a criterion name, optionally with @ and layer budgets (random@erk, snip@ticket); "
                  "autos follows its predictor's recipe (PruneConfig.from_predictor)."},
    )
    sparsities: list[float] = field(default_factory=lambda: [0.9], metadata={"help": "Sparsities in [0, 1)."})
    seeds: list[int] = field(default_factory=lambda: [1], metadata={"help": "Model initialization seeds."})
    budgets: str = field(
        default="auto",
        metadata={"help": "Default layer budgets (list_budgets()): auto (the criterion's own, else global), global, "
                  "uniform, erk, ticket, learned."},
    )
    num_batches: int = field(default=4, metadata={"help": "Batches for data-dependent criteria."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the train/test split."})
    include_dense: bool = field(default=True, metadata={"help": "Also train the unpruned model per seed."})
    predictor: str | None = field(default=None, metadata={"help": "AutoS predictor folder or Hub id (for autos)."})
    ticket_source: str | None = field(
        default=None, metadata={"help": "IRP run folder or score dataset (for ticket and @irp budgets)."}
    )
    output_dir: str = field(default="outputs/prune", metadata={"help": "Where results are written."})

    def __post_init__(self) -> None:
        from ..allocation import allocation_class
        from ..masks import check_sparsity

        for s in self.sparsities:
            check_sparsity(s, "sparsities")
        for label in self.criteria:
            # Builds nothing heavy: names, budgets and required sources are checked before any training.
            method = parse_method(label, self.budgets)
            if method.criterion.startswith("autos") and not self.predictor:
                raise ValueError(f"{label!r} needs --predictor (a folder written by recipes/train_autos.py)")
            if "ticket" in (method.criterion, allocation_class(method.budgets).name if method.budgets != "auto" else ""):
                if not self.ticket_source:
                    raise ValueError(f"{label!r} needs --ticket_source (an IRP run folder or score dataset)")


# The one-line spelling of a method in grids and benchmark configs: "criterion@budgets" ("snip@ticket",
# "random@erk"); a variant after "/" names e.g. a predictor ablation and does not change the criterion.
METHOD_SEPARATOR = "@"


@dataclass(frozen=True)
class Method:
    """A grid method label split into its criterion and layer budgets."""

    criterion: str
    budgets: str


def parse_method(label: str, default_budgets: str = "auto") -> Method:
    """A method label -> criterion and budgets: ``"snip@ticket"`` -> ``("snip", "ticket")``; ``"snip"`` -> ``("snip",
    default_budgets)``; a variant after ``/`` names e.g. a predictor ablation and keeps the criterion:
    ``"autos/weight-only"`` -> ``("autos", ...)``. Unknown names raise ``ValueError``."""
    from ..allocation import allocation_class
    from ..criteria.base import criterion_class

    head, _, budgets = label.partition(METHOD_SEPARATOR)
    method = Method(head.partition("/")[0], budgets or default_budgets)
    criterion_class(method.criterion)
    if method.budgets != "auto":
        allocation_class(method.budgets)
    return method


@dataclass
class PipelineArguments:
    """The built-in default: LeNet-300-100 on the MNIST digits, IRP seed 0, fresh seeds 1-3."""

    output_dir: str = field(default="outputs/autosparse", metadata={"help": "Folder for every stage's outputs."})
    model: str = field(default="lenet300100", metadata={"help": "Built-in model or timm model name."})
    task: str = field(default="mnist", metadata={"help": "Built-in task or Hub dataset."})
    irp_seed: int = field(default=0, metadata={"help": "Seed of the IRP source network."})
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={"help": "Fresh seeds to prune."})
    sparsities: list[float] = field(default_factory=lambda: [0.9, 0.95, 0.98, 0.99], metadata={"help": "Targets."})
    criteria: list[str] = field(
        default_factory=lambda: ["random", "magnitude", "snip", "grasp", "synflow", "autos"],
        metadata={"help": "Criteria compared (autos uses the predictor trained here)."},
    )
    autos_config: str | None = field(
        default=None,
        metadata={"help": "YAML file of AutoSTrainingArguments fields for the predictor (recipes/configs/ablation/*.yaml); "
                  "default: its defaults, the measured default recipe (learned budgets, SynFlow inside)."},
    )
    disable_tqdm: bool = field(default=True, metadata={"help": "Hide the Trainer progress bars."})

    def __post_init__(self) -> None:
        if self.irp_seed in self.seeds:
            raise ValueError(
                f"seeds {self.seeds} include the IRP seed {self.irp_seed}: pruning the initialization whose IRP "
                "produced the labels is not a fair test; choose fresh seeds"
            )
