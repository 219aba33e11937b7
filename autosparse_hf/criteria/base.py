"""The criterion interface and registry.

A criterion maps a model at initialization to one importance score per prunable weight (higher = keep). It never
thresholds (selection lives in ``autosparse_hf.masks``) and it leaves the model exactly as it found it: weights,
buffers, gradients, ``requires_grad``, train/eval modes and RNG states (``compute_scores`` guarantees this).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..families import ModelFamily, PrunableParameter, get_family, get_prunable_parameters
from ..gradients import take_batches
from ..masks import check_scores
from ..masks.enforce import is_sharded
from ..state import float32_scoring, preserved_model_state, revived_zero_norm_scales, revived_zero_weights

logger = logging.getLogger(__name__)

@dataclass
class ScoringContext:
    """Everything a criterion may use.

    Attributes:
        model: The model to score (at initialization, or trained for IRP).
        params: Its prunable parameters, keyed by name.
        family: The model's family adapter (how to feed it).
        dataloader: Iterable of batch dicts, or ``None`` for data-free scoring.
        num_batches: How many batches data-dependent criteria use.
        sparsity: The sparsity the scores will be thresholded at (iterative criteria such as SynFlow need it).
        existing: Masks already in force (pruned weights are zero); criteria that prune iteratively start there.
        budgets: Kept weights per tensor at ``sparsity`` when the allocation fixes them before scoring (an IRP
            ticket's or a learned budget model's); iterative criteria (SynFlow) prune towards them round by round.
    """

    model: nn.Module
    params: dict[str, PrunableParameter]
    family: ModelFamily
    dataloader: Iterable[Mapping[str, Any]] | None = None
    num_batches: int = 1
    sparsity: float = 0.0
    existing: Mapping[str, torch.Tensor] | None = None
    budgets: Mapping[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Criterion:
    """Base class: subclasses set ``name`` and ``needs_data`` and implement :meth:`score`."""

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    # Whether ``score`` writes the parameters' values (SynFlow's |w|, FORCE's masked weights): if not, scoring does not
    # copy the weights to restore them (one model's size of memory less). Unknown criteria are assumed to write.
    writes_weights: ClassVar[bool] = True

    def score(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def read_batches(self, context: ScoringContext, count: int | None = None) -> list[Any]:
        """The first ``count`` (default ``context.num_batches``) batches of the context's dataloader, remembered for
        :meth:`batches_used`: a dataloader with fewer batches than asked for is averaged over what it has."""
        batches = take_batches(context.dataloader, context.num_batches if count is None else count, self.name)
        self._batches_read = len(batches)
        return batches

    def batches_used(self, num_batches: int) -> int:
        """How many batches scoring really averaged over when called with ``num_batches`` (recorded in masks): fewer
        when the last dataloader scored (through :meth:`read_batches`) held fewer."""
        read = getattr(self, "_batches_read", None)
        return num_batches if read is None else min(num_batches, read)

    def metadata(self) -> dict[str, Any]:
        """JSON-ready facts recorded in the masks this criterion selects (e.g. the IRP run a ticket came from)."""
        return {}

    def default_budgets(self) -> Any:
        """The layer budgets this criterion is meant to run in, used by ``budgets="auto"``: a registered allocation
        name or an ``Allocation`` instance (a learned AutoS predictor brings its own budget model)."""
        return "global"


_CRITERIA: dict[str, type[Criterion]] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: make a criterion available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _CRITERIA[cls.name] = cls
    return cls


def list_criteria() -> list[str]:
    """Names of all registered criteria, sorted."""
    return sorted(_CRITERIA)


def get_criterion(criterion: str | Criterion, **options: Any) -> Criterion:
    """A criterion instance from a name (with options) or an instance."""
    if isinstance(criterion, Criterion):
        if options:
            raise ValueError("options are only accepted with a criterion name, not an instance")
        return criterion
    cls = criterion_class(criterion)
    if dataclasses.is_dataclass(cls):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"criterion {criterion!r} takes no option(s) {unknown}; options: {sorted(known)}")
    return cls(**options)


def criterion_class(name: str) -> type[Criterion]:
    """The registered class of ``name``; unknown names raise ``ValueError`` listing the known ones."""
    if name not in _CRITERIA:
        close = difflib.get_close_matches(str(name), list_criteria(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown criterion {name!r}{hint}; known criteria: {', '.join(list_criteria())}")
    return _CRITERIA[name]


def compute_scores(
    model: nn.Module,
    criterion: str | Criterion,
    *,
    dataloader: Iterable[Mapping[str, Any]] | None = None,
    num_batches: int = 1,
    sparsity: float = 0.0,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    existing: Mapping[str, torch.Tensor] | None = None,
    params: dict[str, PrunableParameter] | None = None,
    budgets: Mapping[str, int] | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Score every prunable weight of ``model`` with ``criterion``; the model is left as it was found.

    Raises:
        ValueError: unknown criterion (listing the known ones), a data-dependent criterion without data, no
            prunable parameters, or NaN/infinite scores (naming the parameter).
    """
    crit = get_criterion(criterion, **options)
    if crit.needs_data and dataloader is None:
        raise ValueError(f"criterion {crit.name!r} needs data: pass a dataloader")
    params = params if params is not None else get_prunable_parameters(model, include, exclude)
    sharded = [n for n, p in params.items() if is_sharded(p.param)]
    if sharded:
        raise ValueError(
            f"cannot score sharded parameters ({', '.join(sharded[:3])}{', ...' if len(sharded) > 3 else ''} are "
            "DTensors, e.g. from FSDP2's fully_shard): score the full model before sharding it, then keep the masks "
            "with MaskEnforcer on the sharded model (docs/distributed.md)"
        )
    context = ScoringContext(
        model=model,
        params=params,
        family=get_family(model),
        dataloader=dataloader,
        num_batches=num_batches,
        sparsity=sparsity,
        existing=existing,
        budgets=budgets,
    )
    # Half-precision models are scored in float32 (then cast back): same scores as their float32 copy. Zero-initialized
    # normalization scales (timm's residual blocks) are scored as ones, and all-zero weight tensors (timm's MLP-Mixer
    # head) as default-initialized, or the weights they gate would all tie at 0.
    weights = {n: (p.param, p.fan_in) for n, p in params.items()}
    with (
        preserved_model_state(model, weights=crit.writes_weights),
        float32_scoring(model),
        revived_zero_norm_scales(model) as revived,
        revived_zero_weights(weights, existing) as revived_weights,
    ):
        if revived:
            logger.info("scoring %s with %d zero-initialized normalization scales set to 1", crit.name, revived)
        if revived_weights:
            logger.info("scoring %s with the all-zero tensor(s) %s default-initialized", crit.name, revived_weights)
        scores = crit.score(context)
    # float64 stays float64: iterative criteria (SynFlow, ticket) encode an order finer than float32 resolves.
    scores = {n: scores[n].detach() for n in params}
    scores = {n: s if s.dtype == torch.float64 else s.float() for n, s in scores.items()}
    check_scores(scores)
    return scores
