"""How good is a predicted ranking of weights: Spearman correlation and top-k overlap with IRP survivors."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.stats import spearmanr

DEFAULT_DENSITIES: tuple[float, ...] = (0.10, 0.05, 0.01)


def topk_overlap(scores: np.ndarray, survivors: np.ndarray) -> float:
    """Fraction of the ``k = |survivors|`` highest scores that are survivors (ties broken by position)."""
    k = int(survivors.sum())
    if k == 0:
        return float("nan")
    top = np.argsort(-scores, kind="stable")[:k]
    return float(survivors[top].mean())


def ranking_metrics(
    predictions: np.ndarray,
    surviving_score: np.ndarray,
    survivors: Mapping[float, np.ndarray],
    baselines: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Spearman correlation with the surviving score and top-k overlap with the IRP survivors at each density.

    ``survivors`` maps a density to the boolean row mask of IRP survivors there (``ScoreTable.survivors_at``).

    The same metrics are reported for each baseline score (e.g. ``magnitude`` = |w0|, ``snip`` = |w0 g0|) on the same
    rows, so the predictor is judged against what it must beat.
    """
    result: dict[str, float] = {}
    candidates = {"autos": predictions, **dict(baselines or {})}
    for name, scores in candidates.items():
        rho = spearmanr(scores, surviving_score).statistic
        result[f"{name}_spearman"] = float(rho)
        for d, rows in survivors.items():
            result[f"{name}_overlap@{100 * d:g}%"] = topk_overlap(scores, rows)
    return result
