"""Guards: layer collapse and a model that is not at initialization are reported, once, with the remedy."""

from __future__ import annotations

import logging

import torch
from torch import nn

import autosparse_hf as A


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 3))


def test_a_mask_that_empties_a_tensor_is_reported_with_the_min_density_hint(caplog):
    model = mlp()
    with torch.no_grad():
        model[4].weight.mul_(1e-6)  # the last layer's magnitudes are the smallest: global magnitude empties it
    with caplog.at_level(logging.WARNING, logger="autosparse_hf"):
        masks = A.prune_at_init(model, "magnitude", 0.95)
    assert masks.layer_density()["4.weight"] == 0.0
    warnings = [r.getMessage() for r in caplog.records if "keep less than" in r.getMessage()]
    assert len(warnings) == 1 and "4.weight (0%)" in warnings[0] and "min_density" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autosparse_hf"):
        A.prune_at_init(mlp(), "magnitude", 0.95, min_density=0.05)
    assert not [r for r in caplog.records if "keep less than" in r.getMessage()]


def test_an_already_pruned_model_is_reported(caplog):
    model = mlp()
    A.prune_at_init(model, "magnitude", 0.9)
    with caplog.at_level(logging.WARNING, logger="autosparse_hf"):
        A.prune_at_init(model, "magnitude", 0.5)
    assert any("are exactly zero" in r.getMessage() and "90.0%" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autosparse_hf"):
        A.prune_at_init(mlp(), "magnitude", 0.5)
    assert not [r for r in caplog.records if "are exactly zero" in r.getMessage()]
