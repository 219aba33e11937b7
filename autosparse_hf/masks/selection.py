"""From scores to masks: global top-k, layer-wise uniform and ERK budgets, with exact counts.

Every scope is defined by one rule: each weight gets a sort key, and the ``k`` weights with the smallest keys are
kept, ties going to the weight that comes first in parameter order, then position. Because the kept set for ``k`` is
always contained in the kept set for ``k + 1``, selection is monotone in the sparsity for every scope.

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

The rule is implemented without sorting (linear time): every scope reduces to "keep the ``c`` best of a vector, ties
to the lowest index" (:func:`top_count`), found from the ``c``-th largest value (a k-th value search on a sampled
bracket) and the position order of the ties at that value. ``uniform`` and ``erk`` keys depend only on ranks inside
a tensor, so their per-tensor counts come from the shapes and alive counts alone (:func:`_divisor_counts`, exactly
the float64 keys above), and then each tensor keeps its ``count`` best. The masks are the same, bit for bit, as
those of a stable sort of the keys (``tests/masks/test_selection_fast.py`` checks it against that implementation).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from .maskset import MaskSet
from .topk import _SELECTION_DEVICE_TYPES, _top_count_among, top_count_across

Scope = Literal["global", "uniform", "erk", "counts"]
SCOPES: tuple[str, ...] = ("global", "uniform", "erk", "counts")
# Scopes that need nothing but the scores (IRP prunes with these).
SCORE_SCOPES: tuple[str, ...] = ("global", "uniform", "erk")

# Dtypes whose every value a float32 holds exactly.
_FLOAT32_EXACT = (torch.float32, torch.float16, torch.bfloat16)
# Ranks inside one tensor stay below this so that the float64 keys (r + 0.5) / w strictly increase with r.
_MAX_TENSOR_SIZE = 1 << 50


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Validate a sparsity in [0, 1); returns it as float."""
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def check_scores(scores: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming the first parameter whose scores are NaN or infinite."""
    for name, score in scores.items():
        if not isinstance(score, torch.Tensor):
            raise TypeError(f"scores for parameter {name!r} must be a torch.Tensor, got {type(score).__name__}")
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


# --------------------------------------------------------------------------------------------------------------------
# Per-tensor counts of the divisor scopes (uniform, erk), without looking at the scores.


def _float_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _bits_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def _ranks_at_most(x: float, weight: float, low: int, high: int) -> int:
    """How many ranks ``r`` in ``[low, high)`` have the float64 key ``(r + 0.5) / weight <= x`` (keys increase)."""
    if high <= low:
        return 0
    r = min(max(int(math.floor(x * weight - 0.5)), low - 1), high - 1)  # a guess, off by at most one
    while r >= low and (r + 0.5) / weight > x:
        r -= 1
    while r + 1 < high and (r + 1.5) / weight <= x:
        r += 1
    return r + 1 - low


def _divisor_counts(weights: Sequence[float], reserved: Sequence[int], alive: Sequence[int], extra: int) -> list[int]:
    """Per-tensor kept counts of the divisor keys: ``reserved[t]`` each, plus the ``extra`` smallest keys.

    Tensor ``t`` offers the keys ``(r + 0.5) / weights[t]`` for ranks ``r`` in ``[reserved[t], alive[t])`` (its best
    weights after the reserved ones). The ``extra``-th smallest of all those keys, ``T``, is found by bisection on
    the bit pattern of positive doubles (which orders them); every key below ``T`` is kept, and the keys equal to
    ``T`` go to the earliest tensors, as a stable sort of the flat keys would do (inside a tensor the keys strictly
    increase, so the tie order between tensors is the parameter order).
    """
    counts = list(reserved)
    offered = [(w, lo, hi) for w, lo, hi in zip(weights, reserved, alive, strict=True) if hi > lo]
    if extra <= 0 or not offered:
        return counts

    def at_most(x: float) -> int:
        return sum(_ranks_at_most(x, w, lo, hi) for w, lo, hi in offered)

    low = _float_bits(min((lo + 0.5) / w for w, lo, _ in offered)) - 1  # at_most(low) == 0 < extra
    high = _float_bits(max((hi - 0.5) / w for w, _, hi in offered))  # at_most(high) == all offered >= extra
    while high - low > 1:
        mid = (low + high) // 2
        if at_most(_bits_float(mid)) >= extra:
            high = mid
        else:
            low = mid
    threshold, below = _bits_float(high), _bits_float(high - 1)
    remaining = extra - at_most(below)
    for t, (w, lo, hi) in enumerate(zip(weights, reserved, alive, strict=True)):
        less = _ranks_at_most(below, w, lo, hi)
        equal = _ranks_at_most(threshold, w, lo, hi) - less
        taken = min(equal, remaining)
        remaining -= taken
        counts[t] += less + taken
    return counts


# --------------------------------------------------------------------------------------------------------------------
# select_masks


def _key_dtype(scores: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype the scores are compared in: their own when they share float32 or float64, else float64.

    Converting to float64 is exact and keeps the order, so comparing float32 scores as float32 keeps the masks of the
    float64 keys and moves half the bytes.
    """
    dtypes = {s.dtype for s in scores.values()}
    if len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64}:
        return dtypes.pop()
    return torch.float64


def _selection_device(scores: Mapping[str, torch.Tensor]) -> torch.device:
    """Select where the scores are when that is one CUDA device (no copy to the host); else on the CPU."""
    devices = {s.device for s in scores.values()}
    if len(devices) == 1 and next(iter(devices)).type in _SELECTION_DEVICE_TYPES:
        return devices.pop()
    return torch.device("cpu")


def _validate_counts(
    names: Sequence[str], layer_counts: Mapping[str, int] | None, k: int, sparsity: float, min_density: float
) -> None:
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


def _global_keep(
    flats: Sequence[torch.Tensor],
    alive: Sequence[torch.Tensor | None],
    reserved: Sequence[int],
    k: int,
    breaks: Sequence[torch.Tensor | None],
) -> list[torch.Tensor]:
    """The global scope: each tensor's ``reserved`` best, then the best of all the rest, ties by ``breaks`` (when
    given), then in flat order."""
    keeps: list[torch.Tensor] = []
    candidates: list[torch.Tensor | None] = []
    for flat, alive_t, n_reserved, tb in zip(flats, alive, reserved, breaks, strict=True):
        keep = _top_count_among(flat, alive_t, n_reserved, tb)
        keeps.append(keep)
        if n_reserved:
            candidates.append(alive_t & ~keep if alive_t is not None else ~keep)
        else:
            candidates.append(alive_t)
    extra = k - sum(reserved)
    if extra <= 0:
        return keeps
    # Without concatenating the tensors (top_count_across): a model-sized copy of the scores, of the candidate
    # flags and of the tie-breaks less at the peak.
    chosen = top_count_across(flats, candidates, extra, breaks if breaks and breaks[0] is not None else None)
    return [keep | part for keep, part in zip(keeps, chosen, strict=True)]


def select_masks(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    scope: Scope = "global",
    min_density: float = 0.0,
    existing: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, object] | None = None,
    layer_counts: Mapping[str, int] | None = None,
    tie_break: Mapping[str, torch.Tensor] | None = None,
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
        tie_break: A second score per weight (shaped like the scores) that decides between equal scores, e.g.
            ``|w0|`` (``prune_at_init`` passes it); without it, and for its own ties, parameter order then position.

    Raises:
        ValueError: on a sparsity outside [0, 1), an unknown scope, NaN/inf scores (naming the parameter), a
            target that would need reviving weights, or a ``min_density`` the target cannot honour.

    Example:
        ```python
        >>> masks = select_masks({"fc.weight": torch.rand(10, 20)}, 0.9, scope="uniform")
        >>> masks.num_kept
        20
        ```
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
        _validate_counts(names, layer_counts, k, sparsity, min_density)

    device, dtype = _selection_device(scores), _key_dtype(scores)
    # Tie-breaks compared in float32 when they are all float32, float16 or bfloat16 (each such value is a float32
    # exactly), else in float64: half the bytes (|w0| of every weight is a model-sized vector at scale).
    break_dtype = (
        torch.float32
        if tie_break is not None and all(tie_break[n].dtype in _FLOAT32_EXACT for n in names)
        else torch.float64
    )
    flats: list[torch.Tensor] = []
    breaks: list[torch.Tensor | None] = []
    alive: list[torch.Tensor | None] = []  # None: every weight of the tensor is alive
    n_alive: list[int] = []
    reserved: list[int] = []
    for name in names:
        flat = scores[name].detach().reshape(-1).to(device=device, dtype=dtype)
        if flat.numel() >= _MAX_TENSOR_SIZE:
            raise ValueError(f"parameter {name!r} has {flat.numel()} weights, more than selection supports")
        alive_t = existing[name].reshape(-1).to(device=device).bool() if existing is not None else None
        count_alive = int(torch.count_nonzero(alive_t)) if alive_t is not None else flat.numel()
        if alive_t is not None and count_alive == flat.numel():
            alive_t = None
        if scope == "counts" and int(layer_counts[name]) > count_alive:  # type: ignore[index]
            raise ValueError(
                f"layer_counts asks {int(layer_counts[name])} weights of {name!r}, which has only {count_alive} "  # type: ignore[index]
                "unpruned"
            )
        flats.append(flat)
        breaks.append(
            tie_break[name].detach().reshape(-1).to(device=device, dtype=break_dtype) if tie_break is not None else None
        )
        alive.append(alive_t)
        n_alive.append(count_alive)
        reserved.append(min(math.ceil(min_density * flat.numel()), count_alive))
    if k > sum(n_alive):
        raise ValueError(
            f"sparsity {sparsity} keeps {k} weights but the existing mask keeps only {sum(n_alive)}; "
            "selection never revives a pruned weight"
        )
    if sum(reserved) > k:
        raise ValueError(
            f"min_density={min_density} reserves {sum(reserved)} weights, more than the {k} kept at sparsity {sparsity}"
        )

    if scope == "global":
        keeps = _global_keep(flats, alive, reserved, k, breaks)
    else:
        if scope == "counts":
            counts = [int(layer_counts[n]) for n in names]  # type: ignore[index]
        else:
            weights = [_layer_weight(scores[n].shape, scope) for n in names]
            counts = _divisor_counts(weights, reserved, n_alive, k - sum(reserved))
        keeps = [_top_count_among(f, a, c, b) for f, a, c, b in zip(flats, alive, counts, breaks, strict=True)]
    masks = {
        name: keep.reshape(scores[name].shape).to(scores[name].device) for name, keep in zip(names, keeps, strict=True)
    }
    info = {"sparsity": sparsity, "scope": scope, "min_density": min_density}
    info.update(metadata or {})
    return MaskSet(masks, info)
