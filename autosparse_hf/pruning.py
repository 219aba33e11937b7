"""``prune_at_init``: score, select, apply, in one call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from .criteria import Criterion, compute_scores, get_criterion
from .families import get_prunable_parameters
from .masks import MaskSet, Scope, broadcast_masks, check_sparsity, select_masks


def prune_at_init(
    model: nn.Module,
    criterion: str | Criterion,
    sparsity: float,
    dataloader: Iterable[Mapping[str, Any]] | None = None,
    *,
    num_batches: int = 1,
    scope: Scope = "global",
    min_density: float = 0.0,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    criterion_options: Mapping[str, Any] | None = None,
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
        scope: ``"global"`` (one threshold, the paper's), ``"uniform"`` or ``"erk"`` per-layer budgets.
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
    crit = get_criterion(criterion, **dict(criterion_options or {}))
    params = get_prunable_parameters(model, include, exclude)
    scores = compute_scores(
        model, crit, dataloader=dataloader, num_batches=num_batches, sparsity=sparsity, params=params
    )
    masks = select_masks(
        scores,
        sparsity,
        scope=scope,
        min_density=min_density,
        metadata={
            "criterion": crit.name,
            "criterion_options": dict(criterion_options or {}),
            "num_batches": num_batches,
            "include": list(include or []),
            "exclude": list(exclude or []),
            "model_class": type(model).__name__,
        },
    )
    masks = MaskSet(broadcast_masks(masks), masks.metadata)
    masks.apply(model)
    return masks
