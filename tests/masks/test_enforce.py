"""Gradient hooks: pruned weights' gradients are zero before anything reads them (clipping, DDP, optimizer)."""

import pytest
import torch
from torch import nn

from autosparse_hf import MaskEnforcer, MaskSet
from autosparse_hf.masks import zero_pruned_weights


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _masks(model: nn.Module) -> MaskSet:
    g = torch.Generator().manual_seed(1)
    return MaskSet({n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters() if n.endswith("weight")})


def test_hooks_mask_gradients_during_backward_so_clipping_sees_only_kept_weights():
    model, reference = _model(), _model()
    masks = _masks(model)
    enforcer = MaskEnforcer(model, masks)
    x = torch.randn(8, 6)
    model(x).pow(2).sum().backward()
    reference(x).pow(2).sum().backward()
    for name, param in model.named_parameters():
        ref = dict(reference.named_parameters())[name].grad
        expected = ref * masks[name] if name in masks else ref
        assert torch.equal(param.grad, expected)
    # The norm that gradient clipping computes counts kept weights only.
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9)
    expected_norm = torch.norm(
        torch.stack([(dict(reference.named_parameters())[n].grad * masks.get(n, 1)).norm() for n, _ in model.named_parameters()])
    )
    assert torch.allclose(norm, expected_norm)
    enforcer.remove()


def test_remove_takes_the_hooks_off():
    model = _model()
    masks = _masks(model)
    enforcer = MaskEnforcer(model, masks)
    assert enforcer.uses_hooks
    enforcer.remove()
    model(torch.randn(4, 6)).sum().backward()
    name = next(iter(masks))
    grad = dict(model.named_parameters())[name].grad
    assert bool((grad[~masks[name]] != 0).any())


def test_without_hooks_mask_gradients_masks_in_place():
    model = _model()
    masks = _masks(model)
    enforcer = MaskEnforcer(model, masks, gradient_hooks=False)
    model(torch.randn(4, 6)).sum().backward()
    enforcer.mask_gradients()
    for name, mask in masks.items():
        assert bool((dict(model.named_parameters())[name].grad[~mask] == 0).all())


def test_a_mask_of_another_shape_is_refused_not_broadcast():
    # A (5,)-shaped mask would broadcast over the rows of the (3, 5) weight and prune whole columns without a word.
    model = _model()
    column_mask = torch.tensor([True, False, True, False, True])
    with pytest.raises(ValueError, match=r"2\.weight.*\(5,\).*\(3, 5\)"):
        MaskEnforcer(model, {"2.weight": column_mask})
    with pytest.raises(ValueError, match=r"2\.weight.*\(5,\).*\(3, 5\)"):
        zero_pruned_weights(model, {"2.weight": column_mask})
