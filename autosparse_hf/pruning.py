"""Pruning at initialization as four steps: score (a criterion) -> allocate (layer budgets) -> select -> apply.

``PruneConfig`` says what to do, once, for ``prune_at_init``, ``PaICallback``, ``AutoSCallback``, the grids and the
recipes (its fields carry help text for ``HfArgumentParser``). AutoSparse: Liu et al. 2024, arXiv 2408.14757.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from .allocation import Allocation, allocation_class, get_allocation
from .allocation.base import option_names
from .criteria import Criterion, compute_scores, criterion_class, get_criterion
from .families import get_prunable_parameters
from .families.base import name_patterns
from .guards import warn_collapsed, warn_if_not_at_initialization, warn_ties
from .masks import MaskSet, broadcast_masks, check_sparsity, select_masks
from .predictor.loading import load_predictor

logger = logging.getLogger(__name__)

def json_safe(value: Any) -> Any:
    """``value`` with anything JSON cannot hold replaced by its name (a predictor by its path, say)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    name = getattr(value, "name_or_path", None) or getattr(value, "origin", None)
    return str(name) if name else type(value).__name__


class Options(dict):
    """Keyword options of a criterion or allocation: a mapping, or a JSON object as given on a command line (the
    type ``HfArgumentParser`` calls with the flag's text)."""

    def __init__(self, value: Mapping[str, Any] | str | None = None) -> None:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as err:
                raise ValueError(f"options must be a JSON object, got {value!r}: {err}") from err
        if not isinstance(value, Mapping | None):
            raise ValueError(f"options must map option names to values, got {value!r}")
        super().__init__(value or {})


def _as_options(value: Any, name: str) -> Options:
    try:
        return Options(value)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


@dataclass
class PruneConfig:
    """What to prune and how: criterion, sparsity, layer budgets and their options.

    Args:
        criterion: A registered criterion (``autosparse_hf.list_criteria()``); in Python also a ``Criterion``.
        sparsity: Fraction of prunable weights to remove, in [0, 1).
        budgets: Layer budgets (``autosparse_hf.list_budgets()``): ``auto`` (the criterion's own: a learned AutoS
            budget model, else global), ``global``, ``uniform``, ``erk``, ``ticket`` (an IRP run's per-layer
            densities), ``learned`` (an AutoS predictor's budget model); in Python also an ``Allocation``.
        num_batches: Batches for data-dependent criteria.
        min_density: Minimum fraction kept in every tensor (against layer collapse) with score-rule budgets.
        include / exclude: Shell-style parameter-name patterns added to / removed from the prunable set.
        criterion_options / budget_options: Options of the criterion / allocation (``{"rounds": 100}`` for SynFlow).
        predictor: An AutoS predictor (folder, Hub id or ``AutoSModel``) for every part that takes one (criterion
            ``autos``, budgets ``learned``).
        ticket_source: An IRP run (folder, score dataset or ``IRPRecord``) for every part that takes one (criterion
            ``ticket``, budgets ``ticket``).

    Example:
        ```python
        >>> config = PruneConfig("synflow", 0.98, budgets="learned", predictor="outputs/autosparse/autos")
        >>> masks = prune_at_init(model, config=config, dataloader=loader)
        ```
    """

    criterion: str = field(default="snip", metadata={"help": "Registered criterion (list_criteria())."})
    sparsity: float = field(default=0.9, metadata={"help": "Fraction of prunable weights removed, in [0, 1)."})
    budgets: str = field(
        default="auto",
        metadata={"help": "Layer budgets (list_budgets()): auto, global, uniform, erk, ticket or learned."},
    )
    num_batches: int = field(default=1, metadata={"help": "Batches for data-dependent criteria."})
    min_density: float = field(default=0.0, metadata={"help": "Minimum density per tensor (score-rule budgets)."})
    include: list[str] = field(default_factory=list, metadata={"help": "Extra parameter-name patterns to prune."})
    exclude: list[str] = field(default_factory=list, metadata={"help": "Parameter-name patterns never pruned."})
    criterion_options: Options = field(
        default_factory=Options, metadata={"help": 'Options of the criterion (JSON), e.g. \'{"rounds": 100}\'.'}
    )
    budget_options: Options = field(default_factory=Options, metadata={"help": "Options of the budgets (JSON)."})
    # Typed as paths for HfArgumentParser; in Python an AutoSModel / IRPRecord is accepted too.
    predictor: str | None = field(
        default=None, metadata={"help": "AutoS predictor folder or Hub id (criterion autos, budgets learned)."}
    )
    ticket_source: str | None = field(
        default=None, metadata={"help": "IRP run folder or score dataset (criterion ticket, budgets ticket)."}
    )

    def __post_init__(self) -> None:
        self.sparsity = check_sparsity(self.sparsity)
        if not isinstance(self.num_batches, int) or self.num_batches < 1:
            raise ValueError(f"num_batches must be an integer >= 1, got {self.num_batches!r}")
        if not 0.0 <= float(self.min_density) <= 1.0:
            raise ValueError(f"min_density must be in [0, 1], got {self.min_density!r}")
        self.include = name_patterns(self.include, "include")
        self.exclude = name_patterns(self.exclude, "exclude")
        self.criterion_options = _as_options(self.criterion_options, "criterion_options")
        self.budget_options = _as_options(self.budget_options, "budget_options")
        if isinstance(self.criterion, str):
            criterion_class(self.criterion)  # unknown names fail here, listing the known ones
        elif not isinstance(self.criterion, Criterion):
            raise TypeError(f"criterion must be a name or a Criterion, got {type(self.criterion).__name__}")
        elif self.criterion_options:
            raise ValueError("criterion_options are only accepted with a criterion name, not an instance")
        if isinstance(self.budgets, str) and self.budgets != "auto":
            allocation_class(self.budgets)  # unknown names fail here, listing the known ones
        elif not isinstance(self.budgets, (str, Allocation)):
            raise TypeError(f"budgets must be a name or an Allocation, got {type(self.budgets).__name__}")

    # --------------------------------------------------------------------------------------------- building
    def _shared(self) -> dict[str, Any]:
        return {"predictor": self.predictor, "ticket_source": self.ticket_source}

    def _with_shared(self, cls: type, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` plus every shared resource (predictor, ticket source) that ``cls`` takes and was not given."""
        accepted = option_names(cls)
        result = dict(options)
        for name, value in self._shared().items():
            if value is not None and name in accepted:
                result.setdefault(name, value)
        return result

    def build_criterion(self) -> Criterion:
        """The criterion instance this config describes."""
        if isinstance(self.criterion, Criterion):
            return self.criterion
        return get_criterion(self.criterion, **self._with_shared(criterion_class(self.criterion), self.criterion_options))

    def build_allocation(self, criterion: Criterion) -> Allocation:
        """The allocation this config describes; ``auto`` is ``criterion``'s own default budgets."""
        budgets = self.budgets
        if budgets == "auto":
            default = criterion.default_budgets()
            if isinstance(default, Allocation):
                return default
            budgets = default
        if isinstance(budgets, Allocation):
            return budgets
        return get_allocation(budgets, **self._with_shared(allocation_class(budgets), self.budget_options))

    @classmethod
    def from_predictor(cls, predictor: Any, **overrides: Any) -> PruneConfig:
        """The pruning recipe an AutoS predictor was trained for: its learned layer budgets (when it has a budget
        model) with the ranking its config names inside them (``within_layer``: ``synflow``, the measured default;
        ``snip`` on the predictor's own gradient batches; or ``predictor``, its own scores: criterion ``autos``)."""
        model = load_predictor(predictor)
        within = model.config.within_layer
        values: dict[str, Any] = {
            "criterion": "autos" if within == "predictor" else within,
            "budgets": "learned" if model.config.budget_model else "global",
            "predictor": model,
        }
        if within == "snip":
            values["num_batches"] = model.config.feature_num_batches
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (instances replaced by their names)."""
        return json_safe({f.name: getattr(self, f.name) for f in fields(self)})


def prune_at_init(
    model: nn.Module,
    criterion: str | Criterion | None = None,
    sparsity: float | None = None,
    dataloader: Iterable[Mapping[str, Any]] | None = None,
    *,
    config: PruneConfig | None = None,
    scope: str | None = None,
    **options: Any,
) -> MaskSet:
    """Prune ``model`` at initialization; apply the masks and return them.

    This is pruning at initialization (PaI) as studied in AutoSparse (arXiv 2408.14757): score every prunable weight
    (weights of linear and convolution layers by default), split the kept weights between tensors (the layer
    budgets), keep exactly ``round((1 - sparsity) * N)``, zero the rest. Under ``torch.distributed`` the masks of rank 0
    are broadcast, so every rank prunes identically. Keep the masks enforced during training with ``MaskEnforcer``
    or, with a ``Trainer``, use ``PaICallback`` instead.

    Args:
        model: The model at initialization.
        criterion: A registered name (``autosparse_hf.list_criteria()``) or a ``Criterion`` instance.
        sparsity: Fraction of prunable weights to remove, in [0, 1).
        dataloader: Batches for data-dependent criteria (``snip``, ``grasp``); optional otherwise.
        config: A ``PruneConfig`` instead of ``criterion``, ``sparsity`` and the keyword options.
        scope: Old name of ``budgets`` (``"irp"`` is now ``"ticket"``).
        **options: ``PruneConfig`` fields: ``budgets`` (``"auto"``, ``"global"``, ``"uniform"``, ``"erk"``,
            ``"ticket"``, ``"learned"`` or an ``Allocation``), ``num_batches``, ``min_density``, ``include``,
            ``exclude``, ``criterion_options``, ``budget_options``, ``predictor``, ``ticket_source``.

    Returns:
        The applied ``MaskSet``; its metadata records how it was made.

    Example:
        ```python
        >>> import autosparse_hf
        >>> masks = autosparse_hf.prune_at_init(model, "snip", sparsity=0.9, dataloader=train_loader)
        >>> masks = autosparse_hf.prune_at_init(model, "synflow", 0.98, budgets="learned", predictor="autos")
        >>> print(masks.report())
        ```
    """
    if config is None:
        if criterion is None or sparsity is None:
            raise TypeError("prune_at_init needs criterion and sparsity, or config=PruneConfig(...)")
        config = make_prune_config(criterion, sparsity, scope=scope, **options)
    elif criterion is not None or sparsity is not None or scope is not None or options:
        raise TypeError("give either config=PruneConfig(...) or criterion, sparsity and options, not both")
    return prune_with_config(model, config, dataloader)


def budgets_option(options: dict[str, Any], scope: str | None = None) -> dict[str, Any]:
    """``options`` with the old ``scope`` folded into ``budgets`` (they must agree) and a ``budgets`` of ``None``
    dropped (meaning ``"auto"``)."""
    options = dict(options)
    if scope is not None:
        budgets = options.get("budgets")
        if budgets not in (None, "auto", scope):
            raise ValueError(f"scope={scope!r} and budgets={budgets!r} disagree; give one of them (budgets)")
        options["budgets"] = scope
    if options.get("budgets") is None:
        options.pop("budgets", None)
    return options


def make_prune_config(
    criterion: str | Criterion, sparsity: float, *, scope: str | None = None, **options: Any
) -> PruneConfig:
    """A ``PruneConfig`` from ``prune_at_init``-style arguments; ``scope`` is the old name of ``budgets`` and a
    ``budgets`` of ``None`` means ``"auto"``. Unknown options are an error that lists the fields."""
    options = budgets_option(options, scope)
    known = {f.name for f in fields(PruneConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown pruning option(s) {unknown}; PruneConfig fields: {sorted(known)}")
    return PruneConfig(criterion=criterion, sparsity=sparsity, **options)  # type: ignore[arg-type]


def prune_with_config(
    model: nn.Module, config: PruneConfig, dataloader: Iterable[Mapping[str, Any]] | None = None
) -> MaskSet:
    """Score -> allocate -> select -> apply, as ``config`` says (see ``prune_at_init``)."""
    crit = config.build_criterion()
    allocation = config.build_allocation(crit)
    params = get_prunable_parameters(model, config.include, config.exclude)
    warn_if_not_at_initialization(params, type(model).__name__, f"prune_at_init({crit.name!r})")
    budgets = allocation.allocate(params, config.sparsity, type(model).__name__)
    scores = compute_scores(
        model,
        crit,
        dataloader=dataloader,
        num_batches=config.num_batches,
        sparsity=config.sparsity,
        params=params,
        budgets=budgets.counts,
    )
    masks = select_masks(
        scores,
        config.sparsity,
        scope=budgets.rule,
        min_density=config.min_density,
        layer_counts=budgets.counts,
        # Equal scores are decided by the initial magnitude, not by parameter order (which would pick whole layers
        # when many scores tie, e.g. at zero).
        tie_break={n: p.param.detach().abs() for n, p in params.items()},
        metadata={
            "budgets": allocation.name,
            **dict(budgets.metadata),
            **crit.metadata(),
            "criterion": crit.name,
            "criterion_options": json_safe(config.criterion_options),
            "num_batches": crit.batches_used(config.num_batches),
            "include": list(config.include),
            "exclude": list(config.exclude),
            "model_class": type(model).__name__,
        },
    )
    masks = MaskSet(broadcast_masks(masks), masks.metadata)
    warn_ties(scores, masks)
    masks.apply(model)
    warn_collapsed(masks, config.min_density)
    return masks
