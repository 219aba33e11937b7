"""``preserved_model_state``: what it restores, and the weight copy it skips for criteria that never write weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autosparse_hf.criteria import criterion_class
from autosparse_hf.state import preserved_model_state


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))


def test_without_weights_buffers_grads_modes_are_restored_and_no_weight_copy_is_made(monkeypatch):
    net = model()
    net.train()
    weight = net[0].weight.detach().clone()
    stats = net[1].running_mean.clone()
    clones = []
    real_clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda self, *a, **k: clones.append(tuple(self.shape)) or real_clone(self, *a, **k))
    with preserved_model_state(net, weights=False):
        net.eval()
        net[1].running_mean.add_(1.0)
        net[0].weight.grad = torch.ones_like(net[0].weight)
    monkeypatch.undo()
    assert tuple(net[0].weight.shape) not in clones and tuple(net[2].weight.shape) not in clones
    assert torch.equal(net[1].running_mean, stats) and net.training and net[0].weight.grad is None
    assert torch.equal(net[0].weight, weight)


@pytest.mark.parametrize("name", ["snip", "grasp", "prospr", "ntksap", "magnitude", "random", "force", "iter_snip", "synflow"])
def test_criteria_that_only_read_weights_skip_the_copy(name):
    assert not criterion_class(name).writes_weights
