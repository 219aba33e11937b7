"""Losses of the AutoS predictor."""

from __future__ import annotations

import torch
from torch import nn


def pairwise_ranking_loss(
    scores: torch.Tensor, targets: torch.Tensor, group: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pairwise logistic ranking loss within groups (layers).

    Every row is paired with a random other row of the batch; pairs from different groups or with equal targets
    are ignored; for the rest the loss is ``log(1 + exp(-sign(t_i - t_j) (s_i - s_j)))``. Only the order of the
    scores matters when pruning, which is what this loss trains.
    """
    n = scores.shape[0]
    partner = torch.randperm(n, generator=generator, device="cpu").to(scores.device)
    diff_t = targets - targets[partner]
    valid = diff_t != 0
    if group is not None:
        valid = valid & (group == group[partner])
    if not bool(valid.any()):
        return scores.sum() * 0.0
    sign = torch.sign(diff_t[valid])
    return nn.functional.softplus(-sign * (scores[valid] - scores[partner][valid])).mean()
