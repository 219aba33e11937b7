"""A learned layer-budget model: per-tensor density as a function of layer context and global density.

At high sparsity, the split of the kept weights between layers decides accuracy more than the ranking inside a
layer (METHOD notes, section 6): one global threshold on init-time scores empties the first layer. This model is
fitted on the IRP masks of every cycle of the source run(s): for tensor ``l`` after cycle ``c``,
``logit(d_lc) - logit(d_c) = theta . x_l(d_c)``, a ridge regression on layer context and the global density. At
prune time an offset ``t`` is found so that ``sum_l n_l sigmoid(logit(d) + theta . x_l + t)`` equals the kept
count exactly, then counts are rounded by largest remainder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..features import LayerContext

BUDGET_FEATURES: tuple[str, ...] = (
    "bias",
    "log_fan_in",
    "log_fan_out",
    "log_share",
    "relative_depth",
    "is_conv",
    "logit_density",
    "logit_density_x_log_share",
    "logit_density_x_relative_depth",
)


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def budget_design(layer: LayerContext, total: int, density: float) -> np.ndarray:
    """Regressors of one tensor at one global density (``log_share`` = log of the tensor's share of weights)."""
    share = math.log(layer.numel / total)
    z = _logit(min(max(density, 1e-6), 1 - 1e-6))
    values = {
        "bias": 1.0,
        "log_fan_in": math.log(layer.fan_in),
        "log_fan_out": math.log(layer.fan_out),
        "log_share": share,
        "relative_depth": layer.relative_depth,
        "is_conv": 1.0 if layer.kind == "conv" else 0.0,
        "logit_density": z,
        "logit_density_x_log_share": z * share,
        "logit_density_x_relative_depth": z * layer.relative_depth,
    }
    return np.array([values[name] for name in BUDGET_FEATURES])


def fit_budget_model(
    runs: Sequence[tuple[list[LayerContext], dict[str, np.ndarray]]], ridge: float = 1e-2
) -> dict[str, Any]:
    """Fit the model on IRP runs: each run is (layers, cycle_pruned per tensor as flat arrays).

    Every cycle c >= 1 of every run contributes one point per tensor; the bias is not penalized.
    """
    xs, ys = [], []
    for layers, cycle_pruned in runs:
        total = sum(layer.numel for layer in layers)
        cycles = int(max(int(v.max()) for v in cycle_pruned.values())) - 1
        for c in range(1, cycles + 1):
            d = sum(int((cycle_pruned[layer.name] > c).sum()) for layer in layers) / total
            for layer in layers:
                n = layer.numel
                d_l = float((cycle_pruned[layer.name] > c).sum()) / n
                d_l = min(max(d_l, 0.5 / n), 1 - 0.5 / n)
                xs.append(budget_design(layer, total, d))
                ys.append(_logit(d_l) - _logit(d))
    x, y = np.stack(xs), np.array(ys)
    penalty = ridge * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    coef = np.linalg.solve(x.T @ x + penalty * len(y), x.T @ y)
    residual = float(np.sqrt(np.mean((x @ coef - y) ** 2)))
    return {"features": list(BUDGET_FEATURES), "coef": coef.tolist(), "ridge": ridge, "rmse_logit": residual,
            "points": len(y)}


def check_budget_model(model: object, where: str = "the budget model") -> None:
    """Refuse a budget model this library cannot use: wrong features, wrong length, or non-finite coefficients.

    A budget model may come from a stranger's ``config.json``; a NaN or infinite coefficient would make every
    tensor's logit NaN/inf, and the count split silently wrong (or, before this check, endless).

    Raises:
        ValueError: naming ``where`` and the field (``features``, ``coef`` or ``coef[i] (feature)``).
    """
    if not isinstance(model, dict):
        raise ValueError(f"{where} must be an object with 'features' and 'coef', got {type(model).__name__}")
    features = model.get("features")
    if not isinstance(features, list) or list(features) != list(BUDGET_FEATURES):
        raise ValueError(f"{where}: features {features!r} differ from this library's {list(BUDGET_FEATURES)}")
    coef = model.get("coef")
    if not isinstance(coef, list) or len(coef) != len(BUDGET_FEATURES):
        size = len(coef) if isinstance(coef, list) else type(coef).__name__
        raise ValueError(f"{where}: coef must be a list of {len(BUDGET_FEATURES)} numbers, got {size}")
    for i, (name, value) in enumerate(zip(BUDGET_FEATURES, coef, strict=True)):
        # bool is an int in Python; a JSON true is no coefficient.
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{where}: coef[{i}] ({name}) is {value!r}; every coefficient must be a finite number")


def predict_layer_counts(model: dict[str, Any], layers: Sequence[LayerContext], density: float) -> dict[str, int]:
    """Kept weights per tensor at global ``density``, summing exactly to ``round(density * N)``, each >= 1.

    Terminates for every input: the model is checked first (:func:`check_budget_model`), the bisection brackets the
    offset from the tensors' logits and runs a bounded number of steps, and the rounding is in closed form.

    Raises:
        ValueError: a malformed model, a density outside ``(0, 1]``, a tensor whose logit overflows, or fewer kept
            weights than tensors.
    """
    check_budget_model(model)
    if not (isinstance(density, int | float) and 0.0 < density <= 1.0):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}")
    coef = np.asarray(model["coef"], dtype=np.float64)
    total = sum(layer.numel for layer in layers)
    k = int(round(density * total))
    sizes = np.array([layer.numel for layer in layers], dtype=np.float64)
    base = _layer_logits(coef, layers, total, density)
    if k < len(layers) or k > total:
        raise ValueError(f"cannot split {k} kept weights over tensors of sizes {sizes.tolist()} (each keeps >= 1)")
    raw = np.clip(_expected_counts(base, sizes, k), np.minimum(1.0, sizes), sizes)
    counts = _largest_remainder(raw, sizes.astype(np.int64), k)
    return {layer.name: int(c) for layer, c in zip(layers, counts, strict=True)}


def _layer_logits(coef: np.ndarray, layers: Sequence[LayerContext], total: int, density: float) -> np.ndarray:
    """Each tensor's logit density before the offset; finite coefficients can still overflow, so it is checked."""
    z = _logit(min(max(density, 1e-6), 1 - 1e-6))
    with np.errstate(over="ignore", invalid="ignore"):
        base = np.array([z + budget_design(layer, total, density) @ coef for layer in layers])
    bad = [layer.name for layer, b in zip(layers, base, strict=True) if not math.isfinite(b)]
    if bad:
        raise ValueError(f"the budget model gives a non-finite logit for tensor(s) {bad}; its coefficients are unusable")
    return base


def _expected_counts(base: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """``sizes * sigmoid(base + t)`` with the offset ``t`` that makes them sum to ``k`` (bisection).

    The sum increases with ``t``. The bracket is [-50, 50] (enough for any trained model), widened when the logits
    themselves lie beyond it so that it always brackets ``k``; the steps are 200 plus what the extra width needs.
    """

    def kept(t: float) -> np.ndarray:
        with np.errstate(over="ignore"):  # exp overflow -> inf -> a share of exactly 0, which is right
            return sizes / (1.0 + np.exp(-(base + t)))

    lo, hi = min(-50.0, -float(base.max()) - 50.0), max(50.0, -float(base.min()) + 50.0)
    steps = 200 + max(0, math.ceil(math.log2((hi - lo) / 100.0)))
    for _ in range(steps):
        mid = lo / 2 + hi / 2  # halves first: lo + hi may overflow for logits near the float range
        lo, hi = (mid, hi) if kept(mid).sum() < k else (lo, mid)
    return kept(lo / 2 + hi / 2)


def _largest_remainder(raw: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """Integer counts in ``[1, sizes]`` summing to ``k``: ``floor(raw)``, then the units left over (or too many)
    handed out one per tensor per round, tensors in order of their fractional parts, until none remain.

    The rounds are computed in closed form (a search for the number of full rounds), so the cost does not grow with
    the number of units to hand out, and the function always returns. Needs ``len(raw) <= k <= sizes.sum()``.
    """
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    remainder = k - int(counts.sum())
    if remainder > 0:
        counts[order] += _round_robin(sizes[order] - counts[order], remainder)
    elif remainder < 0:
        counts[order] -= _round_robin(counts[order] - 1, -remainder)
    return counts


def _round_robin(capacity: np.ndarray, units: int) -> np.ndarray:
    """Hand ``units`` out one per slot per round, slots in the given order, each slot up to its ``capacity``."""
    if units > int(capacity.sum()):
        raise ValueError(f"cannot hand out {units} units over capacities {capacity.tolist()}")
    # The largest number of full rounds r with sum(min(capacity, r)) <= units.
    lo, hi = 0, int(capacity.max(initial=0))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if int(np.minimum(capacity, mid).sum()) <= units else (lo, mid - 1)
    given = np.minimum(capacity, lo)
    left = units - int(given.sum())
    # The rest goes one each to the first slots, in order, that can still take one.
    open_slots = np.flatnonzero(capacity > lo)[:left]
    given[open_slots] += 1
    return given
