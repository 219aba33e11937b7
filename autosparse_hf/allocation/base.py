"""Allocations: how many weights each prunable tensor keeps (its layer budget), registered by name.

Pruning is score -> allocate -> select -> apply (as jaxpruner keeps them apart). A criterion scores weights; an
allocation decides the per-tensor split of the kept weights; selection (``autosparse_hf.masks.select_masks``) turns
scores plus the allocation into exact masks. Some allocations are fixed before scoring (an IRP ticket's densities, a
learned budget model): they give explicit per-tensor counts, which iterative criteria such as SynFlow also prune
towards round by round. Others are rules applied to the scores by the selection: one global threshold, the same
density per tensor, or Erdos-Renyi-Kernel densities (exact divisor rules; see ``masks.selection``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..families import PrunableParameter
from ..masks import Scope


@dataclass(frozen=True)
class LayerBudgets:
    """The result of an allocation at one sparsity.

    Attributes:
        rule: How selection splits the kept weights: ``"counts"`` (the explicit ``counts``), or a rule applied to the
            scores: ``"global"``, ``"uniform"``, ``"erk"``.
        counts: Kept weights per tensor (``rule="counts"`` only); they sum to the kept total of the sparsity.
        metadata: JSON-ready facts recorded in the masks (e.g. which IRP run the budgets came from).
    """

    rule: Scope
    counts: Mapping[str, int] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.rule == "counts") != (self.counts is not None):
            raise ValueError('LayerBudgets needs counts exactly when rule="counts"')


class Allocation:
    """Base class: subclasses set ``name`` and implement :meth:`allocate`. Options are dataclass fields."""

    name: ClassVar[str] = ""

    def allocate(
        self, params: dict[str, PrunableParameter], sparsity: float, model_class: str = "model"
    ) -> LayerBudgets:
        """The layer budgets of ``params`` at ``sparsity`` (``model_class`` only words error messages)."""
        raise NotImplementedError


_ALLOCATIONS: dict[str, type[Allocation]] = {}
# Old spellings kept for one release.
_ALIASES: dict[str, str] = {"irp": "ticket"}


def register_allocation(cls: type[Allocation]) -> type[Allocation]:
    """Class decorator: make an allocation available by its ``name`` (``prune_at_init(..., budgets=name)``)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _ALLOCATIONS[cls.name] = cls
    return cls


def list_budgets() -> list[str]:
    """Names of all registered allocations (layer-budget rules), sorted."""
    return sorted(_ALLOCATIONS)


def option_names(cls: type) -> set[str]:
    """The options a registered component accepts (its dataclass fields)."""
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def allocation_class(name: str) -> type[Allocation]:
    """The registered class of ``name`` (old aliases accepted)."""
    name = _ALIASES.get(name, name)
    if name not in _ALLOCATIONS:
        close = difflib.get_close_matches(str(name), list_budgets(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown layer budgets {name!r}{hint}; known: {', '.join(list_budgets())}")
    return _ALLOCATIONS[name]


def get_allocation(allocation: str | Allocation, **options: Any) -> Allocation:
    """An allocation instance from a registered name (with options) or an instance."""
    if isinstance(allocation, Allocation):
        if options:
            raise ValueError("options are only accepted with an allocation name, not an instance")
        return allocation
    cls = allocation_class(allocation)
    unknown = sorted(set(options) - option_names(cls))
    if unknown:
        raise ValueError(f"layer budgets {cls.name!r} take no option(s) {unknown}; options: {sorted(option_names(cls))}")
    return cls(**options)


@dataclass
class ExplicitCounts(Allocation):
    """Given per-tensor counts (not registered: for code that already holds counts at one sparsity)."""

    name: ClassVar[str] = "counts"
    counts: Mapping[str, int] = field(default_factory=dict)

    def allocate(self, params: dict[str, PrunableParameter], sparsity: float, model_class: str = "model") -> LayerBudgets:
        missing = sorted(set(params) - set(self.counts))
        if missing:
            raise ValueError(f"the layer counts lack prunable tensors {missing}")
        return LayerBudgets("counts", {n: int(self.counts[n]) for n in params})
