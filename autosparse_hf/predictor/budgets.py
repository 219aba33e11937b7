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


def predict_layer_counts(model: dict[str, Any], layers: Sequence[LayerContext], density: float) -> dict[str, int]:
    """Kept weights per tensor at global ``density``, summing exactly to ``round(density * N)``, each >= 1."""
    if list(model["features"]) != list(BUDGET_FEATURES):
        raise ValueError(f"budget model features {model['features']} differ from this library's {BUDGET_FEATURES}")
    coef = np.asarray(model["coef"])
    total = sum(layer.numel for layer in layers)
    k = int(round(density * total))
    sizes = np.array([layer.numel for layer in layers], dtype=np.float64)
    base = np.array([_logit(min(max(density, 1e-6), 1 - 1e-6)) + budget_design(layer, total, density) @ coef
                     for layer in layers])

    def kept(t: float) -> np.ndarray:
        return sizes / (1.0 + np.exp(-(base + t)))

    lo, hi = -50.0, 50.0
    for _ in range(200):  # bisection: kept(t).sum() is increasing in t
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid).sum() < k else (lo, mid)
    raw = np.clip(kept((lo + hi) / 2), np.minimum(1.0, sizes), sizes)
    counts = np.floor(raw).astype(np.int64)
    remainder = k - int(counts.sum())
    order = np.argsort(-(raw - counts), kind="stable")
    i = 0
    while remainder != 0 and i < 10 * len(layers) + abs(remainder) * len(layers):
        j = order[i % len(layers)]
        if remainder > 0 and counts[j] < sizes[j]:
            counts[j] += 1
            remainder -= 1
        elif remainder < 0 and counts[j] > 1:
            counts[j] -= 1
            remainder += 1
        i += 1
    if remainder != 0:
        raise ValueError(f"cannot split {k} kept weights over tensors of sizes {sizes.tolist()}")
    return {layer.name: int(c) for layer, c in zip(layers, counts, strict=True)}
