"""``prune_at_init``: score, select, apply, in one call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from torch import nn

from .criteria import Criterion, compute_scores, get_criterion
from .families import get_prunable_parameters
from .masks import MaskSet, Scope, broadcast_masks, check_sparsity, select_masks
from .tickets import load_ticket_source, ticket_metadata

Budget = Literal["auto", "global", "uniform", "erk", "irp"]
BUDGETS: tuple[str, ...] = ("auto", "global", "uniform", "erk", "irp")


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


def prune_at_init(
    model: nn.Module,
    criterion: str | Criterion,
    sparsity: float,
    dataloader: Iterable[Mapping[str, Any]] | None = None,
    *,
    num_batches: int = 1,
    scope: Budget = "auto",
    min_density: float = 0.0,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    criterion_options: Mapping[str, Any] | None = None,
    ticket_source: Any = None,
    budgets: Budget | None = None,
) -> MaskSet:
    """Prune ``model`` at initialization with ``criterion`` to ``sparsity``; apply the masks and return them.

    This is pruning at initialization (PaI) as studied in AutoSparse (arXiv 2408.14757): score every prunable weight
    (weights of linear and convolution layers by default), keep the best ``round((1 - sparsity) * N)``, zero the rest.
    Under ``torch.distributed`` the masks of rank 0 are broadcast, so every rank prunes identically. Keep the masks
    enforced during training with ``MaskEnforcer`` or, with a ``Trainer``, use ``PaICallback`` instead.

    Args:
        model: The model at initialization.
        criterion: A registered name (``autosparse_hf.list_criteria()``) or a ``Criterion`` instance.
        sparsity: Fraction of prunable weights to remove, in [0, 1).
        dataloader: Batches (dicts) for data-dependent criteria (``snip``, ``grasp``); optional otherwise.
        num_batches: Batches used by data-dependent criteria.
        scope: Layer budgets: ``"auto"`` (the criterion's own, e.g. a learned AutoS budget model, else global),
            ``"global"`` (one threshold, the paper's), ``"uniform"``, ``"erk"``, or ``"irp"`` (the per-layer
            densities of the IRP ticket of ``ticket_source`` at this sparsity, ranked inside each layer by
            ``criterion``).
        budgets: Another name for ``scope``.
        ticket_source: IRP run folder or score dataset for ``scope="irp"`` (and the default source of the
            ``ticket`` criterion).
        min_density: Minimum fraction kept in every tensor (guards against layer collapse).
        include / exclude: Shell-style parameter-name patterns added to / removed from the prunable set.
        criterion_options: Keyword options of the criterion (e.g. ``{"rounds": 100}`` for SynFlow).

    Returns:
        The applied ``MaskSet``; its metadata records how it was made.

    Example:
        ```python
        >>> import autosparse_hf
        >>> masks = autosparse_hf.prune_at_init(model, "snip", sparsity=0.9, dataloader=train_loader)
        >>> print(masks.report())
        ```
    """
    sparsity = check_sparsity(sparsity)
    if budgets is not None:
        if scope not in ("auto", budgets):
            raise ValueError(f"scope={scope!r} and budgets={budgets!r} disagree; give one of them")
        scope = budgets
    if scope not in BUDGETS:
        raise ValueError(f"unknown layer budgets {scope!r}; choose one of {BUDGETS}")
    options = dict(criterion_options or {})
    if criterion == "ticket" and ticket_source is not None:
        options.setdefault("source", ticket_source)
    crit = get_criterion(criterion, **options)
    params = get_prunable_parameters(model, include, exclude)
    layer_counts = None
    extra: dict[str, Any] = {"budgets": scope}
    selection: Scope = "global" if scope in ("auto", "irp") else scope  # type: ignore[assignment]
    if scope == "irp":
        if ticket_source is None:
            raise ValueError('scope="irp" needs ticket_source (an IRP run folder or score dataset)')
        source = load_ticket_source(ticket_source)
        source.check_compatible(params, type(model).__name__)
        layer_counts = source.layer_counts(1.0 - sparsity)
        extra.update(ticket_metadata(source))
    elif scope == "auto":
        layer_counts = crit.layer_counts(params, sparsity)
    if layer_counts is not None:
        selection = "counts"
    if crit.name == "ticket":
        extra.update(ticket_metadata(crit.ticket_source))  # type: ignore[attr-defined]
    scores = compute_scores(
        model, crit, dataloader=dataloader, num_batches=num_batches, sparsity=sparsity, params=params
    )
    masks = select_masks(
        scores,
        sparsity,
        scope=selection,
        min_density=min_density,
        layer_counts=layer_counts,
        metadata={
            **extra,
            "criterion": crit.name,
            "criterion_options": json_safe(dict(criterion_options or {})),
            "num_batches": crit.batches_used(num_batches),
            "include": list(include or []),
            "exclude": list(exclude or []),
            "model_class": type(model).__name__,
        },
    )
    masks = MaskSet(broadcast_masks(masks), masks.metadata)
    masks.apply(model)
    return masks
