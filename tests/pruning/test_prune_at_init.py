"""``prune_at_init``: score, select, apply; bad input is rejected before the model is touched."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autosparse_hf import Criterion, PaICallback, prune_at_init


class Net(nn.Module):
    example_input_shape = (6,)

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 20)
        self.fc2 = nn.Linear(20, 10)
        self.fc3 = nn.Linear(10, 3)

    def forward(self, pixel_values, labels=None):
        logits = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(pixel_values)))))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class SpyCriterion(Criterion):
    """Records whether it was asked to score."""

    name = "spy"

    def __init__(self) -> None:
        self.called = False

    def score(self, context):
        self.called = True
        return {n: p.param.detach().abs() for n, p in context.params.items()}


class RecordingLoader:
    def __init__(self) -> None:
        self.iterated = False

    def __iter__(self):
        self.iterated = True
        yield {"pixel_values": torch.randn(4, 6), "labels": torch.tensor([0, 1, 2, 0])}


def build() -> Net:
    torch.manual_seed(0)
    return Net()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, float("nan")])
def test_bad_sparsity_is_rejected_before_the_model_is_touched(sparsity):
    model = build()
    before = state(model)
    spy, loader = SpyCriterion(), RecordingLoader()
    with pytest.raises(ValueError, match="sparsity") as info:
        prune_at_init(model, spy, sparsity, loader)
    assert repr(sparsity) in str(info.value)
    assert not spy.called and not loader.iterated
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="sparsity"):
        PaICallback(criterion=spy, sparsity=sparsity)


def test_impossible_selection_leaves_the_model_unchanged():
    model = build()
    before = state(model)
    with pytest.raises(ValueError, match="min_density"):
        prune_at_init(model, "magnitude", 0.95, min_density=0.5)
    with pytest.raises(ValueError, match="per-layer"):
        prune_at_init(model, "magnitude", 0.5, scope="per-layer")
    assert_unchanged(model, before)


def test_unknown_criterion_is_rejected_before_the_model_is_touched():
    model = build()
    before = state(model)
    with pytest.raises(ValueError, match="known criteria"):
        prune_at_init(model, "sniip", 0.5)
    assert_unchanged(model, before)


def test_prune_at_init_applies_exact_masks_and_records_how():
    model = build()
    before = state(model)
    masks = prune_at_init(model, "magnitude", 0.8)
    total = 6 * 20 + 20 * 10 + 10 * 3
    assert list(masks) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert masks.num_kept == round(0.2 * total)
    weights = torch.cat([before[n].abs().flatten() for n in masks])
    kept = torch.cat([m.flatten() for m in masks.values()])
    assert weights[kept].min() > weights[~kept].max()
    for name, mask in masks.items():
        param = model.get_parameter(name)
        assert not param[~mask].any()
        assert torch.equal(param[mask], before[name][mask])
    for name in ("fc1.bias", "fc2.bias", "fc3.bias"):
        assert torch.equal(model.get_parameter(name), before[name])
    expected = {
        "sparsity": 0.8,
        "scope": "global",
        "min_density": 0.0,
        "criterion": "magnitude",
        "criterion_options": {},
        "num_batches": 1,
        "include": [],
        "exclude": [],
        "model_class": "Net",
    }
    assert {key: masks.metadata.get(key) for key in expected} == expected


def test_prune_at_init_passes_scope_min_density_and_patterns_through():
    masks = prune_at_init(build(), "random", 0.9, scope="uniform", exclude=["fc3.*"])
    assert list(masks) == ["fc1.weight", "fc2.weight"]
    for name, density in masks.layer_density().items():
        assert abs(density - 0.1) <= 1 / masks[name].numel()
    masks = prune_at_init(build(), "magnitude", 0.9, min_density=0.08)
    for mask in masks.values():
        assert int(mask.sum()) >= math.ceil(0.08 * mask.numel())
    assert masks.metadata["exclude"] == [] and masks.metadata["min_density"] == 0.08


def test_prune_at_init_with_a_criterion_instance_uses_it():
    spy = SpyCriterion()
    masks = prune_at_init(build(), spy, 0.5)
    assert spy.called and masks.metadata["criterion"] == "spy"


def test_zero_sparsity_keeps_everything():
    model = build()
    before = state(model)
    masks = prune_at_init(model, "snip", 0.0, RecordingLoader())
    assert masks.num_kept == masks.numel and masks.sparsity == 0.0
    assert_unchanged(model, before)
