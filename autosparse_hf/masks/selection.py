"""From scores to masks: global top-k, layer-wise uniform and ERK budgets, with exact counts.

One mechanism serves every scope: each weight gets a sort key, and the ``k`` weights with the smallest keys are
kept (stable sort, so ties go to the weight that comes first in parameter order, then position). Because the kept
set for ``k`` is always contained in the kept set for ``k + 1``, selection is monotone in the sparsity for every
scope.

- ``global`` (AutoSparse, arXiv 2408.14757, and SNIP/GraSP/SynFlow): key = -score, one threshold for all tensors.
- ``uniform``: every tensor keeps the same fraction. Within a tensor, the weight of rank ``r`` (0 = best) gets key
  ``(r + 0.5) / n``, which is the Sainte-Lague divisor rule and gives each tensor ``round(t * n)`` kept weights.
- ``erk``: Erdos-Renyi-Kernel budgets (Evci et al. 2020, "Rigging the lottery", arXiv 1911.11134): density of a
  tensor proportional to ``sum(shape) / prod(shape)``, capped at 1; key ``(r + 0.5) / sum(shape)``.

- ``counts``: explicit per-tensor counts (``layer_counts``), e.g. the per-layer densities of an IRP ticket
  (``autosparse_hf.tickets``) or of a learned budget model; key = rank inside the tensor for the ``count`` best
  weights, +inf for the rest.

``min_density`` keeps at least ``ceil(min_density * n)`` weights of every tensor (against layer collapse) and an
``existing`` mask is never revived: its pruned weights get key +inf and ``k`` may not exceed its kept count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch

from .maskset import MaskSet

Scope = Literal["global", "uniform", "erk", "counts"]
SCOPES: tuple[str, ...] = ("global", "uniform", "erk", "counts")
# Scopes that need nothing but the scores (IRP prunes with these).
SCORE_SCOPES: tuple[str, ...] = ("global", "uniform", "erk")


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Validate a sparsity in [0, 1); returns it as float."""
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def check_scores(scores: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming the first parameter whose scores are NaN or infinite."""
    for name, score in scores.items():
        if not bool(torch.isfinite(score).all()):
            bad = "NaN" if bool(torch.isnan(score).any()) else "infinite"
            raise ValueError(f"scores for parameter {name!r} contain {bad} values")


def num_to_keep(total: int, sparsity: float) -> int:
    """Exact number of weights kept out of ``total`` at ``sparsity`` (nearest integer)."""
    return int(round((1.0 - sparsity) * total))


def _layer_weight(shape: torch.Size, scope: str) -> float:
    numel = math.prod(shape)
    if scope == "uniform":
        return float(numel)
    return float(sum(shape)) if len(shape) > 1 else float(numel)  # erk


def select_masks(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    scope: Scope = "global",
    min_density: float = 0.0,
    existing: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, object] | None = None,
    layer_counts: Mapping[str, int] | None = None,
) -> MaskSet:
    """Keep the best-scoring weights so that exactly ``round((1 - sparsity) * N)`` of ``N`` remain.

    Args:
        scores: Higher is more important; one tensor per parameter, shaped like it.
        sparsity: Fraction of all scored weights to remove, in [0, 1).
        scope: ``"global"`` (one threshold), ``"uniform"`` (same density per tensor), ``"erk"`` or ``"counts"``.
        min_density: Every tensor keeps at least this fraction of its weights (rounded up).
        existing: A mask to prune further; its pruned weights stay pruned.
        metadata: Stored in the returned MaskSet.
        layer_counts: Kept weights per tensor, required by (and only used with) ``scope="counts"``; they must sum
            to the kept total of ``sparsity``.

    Raises:
        ValueError: on a sparsity outside [0, 1), an unknown scope, NaN/inf scores (naming the parameter), a
            target that would need reviving weights, or a ``min_density`` the target cannot honour.
    """
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of {SCOPES}")
    if not 0.0 <= min_density <= 1.0:
        raise ValueError(f"min_density must be in [0, 1], got {min_density!r}")
    if not scores:
        raise ValueError("no scores to select from")
    check_scores(scores)
    names = list(scores)
    if existing is not None:
        missing = [n for n in names if n not in existing]
        if missing:
            raise ValueError(f"existing mask lacks parameters {missing}")
    total = sum(scores[n].numel() for n in names)
    k = num_to_keep(total, sparsity)
    if scope == "counts":
        if min_density:
            raise ValueError('min_density does not apply to scope="counts": the layer counts are given')
        if layer_counts is None:
            raise ValueError('scope="counts" needs layer_counts (per-tensor kept counts, e.g. from an IRP ticket)')
        missing = [n for n in names if n not in layer_counts]
        if missing:
            raise ValueError(f"layer_counts lacks tensors {missing}")
        if sum(int(layer_counts[n]) for n in names) != k:
            raise ValueError(
                f"layer_counts keep {sum(int(layer_counts[n]) for n in names)} weights but sparsity {sparsity} keeps {k}"
            )

    keys: list[torch.Tensor] = []
    alive_total = 0
    reserved_total = 0
    for name in names:
        flat = scores[name].detach().reshape(-1).to(torch.float64).cpu()
        alive = (
            existing[name].reshape(-1).bool().cpu()
            if existing is not None
            else torch.ones_like(flat, dtype=torch.bool)
        )
        n_alive = int(alive.sum())
        alive_total += n_alive
        # Rank within the tensor, best first; dead weights sort last. Stable sort: ties keep position order.
        ranked = torch.where(alive, flat, torch.tensor(-math.inf, dtype=torch.float64))
        order = torch.sort(ranked, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        if scope == "global":
            key = -flat
        elif scope == "counts":
            count = int(layer_counts[name])  # type: ignore[index]
            if count > n_alive:
                raise ValueError(f"layer_counts asks {count} weights of {name!r}, which has only {n_alive} unpruned")
            key = torch.where(rank < count, rank.to(torch.float64), torch.tensor(math.inf, dtype=torch.float64))
        else:
            key = (rank.to(torch.float64) + 0.5) / _layer_weight(scores[name].shape, scope)
        n_reserved = min(math.ceil(min_density * flat.numel()), n_alive)
        reserved_total += n_reserved
        key = torch.where(rank < n_reserved, torch.tensor(-math.inf, dtype=torch.float64), key)
        key = torch.where(alive, key, torch.tensor(math.inf, dtype=torch.float64))
        keys.append(key)
    if k > alive_total:
        raise ValueError(
            f"sparsity {sparsity} keeps {k} weights but the existing mask keeps only {alive_total}; "
            "selection never revives a pruned weight"
        )
    if reserved_total > k:
        raise ValueError(
            f"min_density={min_density} reserves {reserved_total} weights, more than the {k} kept at "
            f"sparsity {sparsity}"
        )
    all_keys = torch.cat(keys)
    chosen = torch.sort(all_keys, stable=True).indices[:k]
    keep = torch.zeros(total, dtype=torch.bool)
    keep[chosen] = True
    masks: dict[str, torch.Tensor] = {}
    offset = 0
    for name in names:
        n = scores[name].numel()
        masks[name] = keep[offset : offset + n].reshape(scores[name].shape).to(scores[name].device)
        offset += n
    info = {"sparsity": sparsity, "scope": scope, "min_density": min_density}
    info.update(metadata or {})
    return MaskSet(masks, info)
