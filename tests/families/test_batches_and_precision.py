"""Batches as users have them, and half-precision models: every criterion scores them like the float32 dict case."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autosparse_hf as A
from autosparse_hf.families import as_batch_dict


class HardNet(nn.Module):
    """Convolutions with hard-swish and a hard-sigmoid gate (what MobileNetV3's blocks are made of)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.act = nn.Hardswish()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(6, 6, 1), nn.Hardsigmoid())
        self.head = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        h = self.act(self.conv(x))
        return self.head((h * self.gate(h)).flatten(1))


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)


def net(seed: int = 0) -> HardNet:
    torch.manual_seed(seed)
    return HardNet()


CRITERIA = ["snip", "grasp", "synflow", "magnitude", "random"]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_tuple_batches_give_the_masks_of_dict_batches(criterion):
    x, y = data()
    tuples = DataLoader(TensorDataset(x, y), batch_size=8)
    dicts = [{"inputs": x[:8], "labels": y[:8]}, {"inputs": x[8:], "labels": y[8:]}]
    lists = [[x[:8], y[:8]], [x[8:], y[8:]]]
    masks = [A.prune_at_init(net(), criterion, 0.8, loader, num_batches=2) for loader in (tuples, dicts, lists)]
    for other in masks[1:]:
        assert all(torch.equal(masks[0][n], other[n]) for n in masks[0])


def test_a_bare_tensor_serves_data_free_criteria_and_data_criteria_say_what_is_missing():
    x, _ = data()
    A.prune_at_init(net(), "synflow", 0.8, [x[:4]])
    with pytest.raises(ValueError, match="no 'labels'"):
        A.prune_at_init(net(), "snip", 0.8, [x[:4]])


def test_an_unsupported_batch_is_named():
    with pytest.raises(TypeError, match="tuple of 3 items"):
        as_batch_dict((torch.zeros(1), torch.zeros(1), torch.zeros(1)), "inputs")
    with pytest.raises(TypeError, match="type str"):
        A.prune_at_init(net(), "snip", 0.8, ["not a batch"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("criterion", ["snip", "grasp", "synflow", "magnitude"])
def test_half_precision_models_are_scored_like_their_float32_copy(criterion, dtype):
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    half = net().to(dtype)
    before = {k: v.clone() for k, v in half.state_dict().items()}
    scores = A.compute_scores(half, criterion, dataloader=loader)
    reference = A.compute_scores(copy.deepcopy(half).float(), criterion, dataloader=loader)
    assert all(torch.equal(scores[n], reference[n]) for n in reference)
    # No side effects: same dtype, same values.
    after = half.state_dict()
    assert all(after[k].dtype == dtype and torch.equal(after[k], before[k]) for k in before if before[k].is_floating_point())
    masks = A.prune_at_init(half, criterion, 0.8, loader)
    assert masks.num_kept == round(0.2 * masks.numel)


def test_grasp_differentiates_twice_through_hard_activations():
    x, y = data()
    scores = A.compute_scores(net(), "grasp", dataloader=[{"inputs": x, "labels": y}])
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert torch.nn.functional.hardsigmoid is not None and torch.nn.functional.hardsigmoid.__module__ == "torch.nn.functional"
