"""SynFlow cannot overflow: float32 where it is finite (scores unchanged), float64 where float32 overflows, rescaled
module outputs where float64 does, and an error naming the module where a NaN still appears."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import autosparse_hf as A
from autosparse_hf.criteria.synflow import SynFlowCriterion
from autosparse_hf.families import get_family
from autosparse_hf.tasks import build_model

LOGGER = "autosparse_hf.criteria"  # synflow.py and numerics.py


def textbook_synflow(model: nn.Module, sparsity: float, rounds: int) -> dict[str, torch.Tensor]:
    """Iterative SynFlow as written before the numeric tiers: float32, ``select_masks`` on whole tensors every
    round, the same score encoding (removed in round r: ``r - 1 + s / (2 max s)``, survivors ``rounds + s / max s``).
    """
    model = copy.deepcopy(model).eval()
    params = A.get_prunable_parameters(model)
    family = get_family(model)
    inputs = family.synflow_inputs(model)
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    magnitudes = {n: p.param.detach().clone() for n, p in params.items()}
    mask = {n: torch.ones_like(m, dtype=torch.bool) for n, m in magnitudes.items()}
    result = {n: torch.zeros_like(m, dtype=torch.float64) for n, m in magnitudes.items()}
    for k in range(1, rounds + 1):
        with torch.no_grad():
            for n, p in params.items():
                p.param.copy_(magnitudes[n] * mask[n])
        model.zero_grad(set_to_none=True)
        family.synflow_output(model, inputs).sum().backward()
        scores = {n: (p.param.detach() * p.param.grad).abs() for n, p in params.items()}
        new = A.select_masks(scores, 1.0 - (1.0 - sparsity) ** (k / rounds), existing=mask)
        peak = max(float(s.max()) for s in scores.values())
        for n in params:
            result[n] = torch.where(mask[n] & ~new[n], (k - 1) + 0.5 * scores[n].double() / peak, result[n])
            if k == rounds:
                result[n] = torch.where(new[n], rounds + scores[n].double() / peak, result[n])
        mask = dict(new)
    return result


class Chain(nn.Sequential):
    """``depth`` bias-free ``Linear(width, width)`` + ReLU layers whose weights are ``U(0, 2 gain / width)``: the
    all-ones signal grows about ``gain``-fold per layer (positively homogeneous, so SynFlow's ranking is
    scale-free)."""

    def __init__(self, depth: int, width: int = 16, gain: float = 64.0, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        for _ in range(depth):
            linear = nn.Linear(width, width, bias=False)
            with torch.no_grad():
                linear.weight.copy_(torch.rand(width, width, generator=generator) * (2 * gain / width))
            layers += [linear, nn.ReLU()]
        super().__init__(*layers)
        self.example_input_shape = (width,)


def scores_of(model: nn.Module, sparsity: float, rounds: int) -> dict[str, torch.Tensor]:
    return A.compute_scores(model, SynFlowCriterion(rounds=rounds, progress=False), sparsity=sparsity)


# ------------------------------------------------------------------------------- float32 where float32 was finite
@pytest.mark.parametrize("name", ["lenet300100", "convnet"])
@pytest.mark.parametrize("sparsity", [0.9, 0.98])
def test_masks_and_scores_are_those_of_the_textbook_float32_loop(name: str, sparsity: float):
    model = build_model(name, 10, input_shape=(1, 28, 28), seed=0)
    rounds = 100 if name == "lenet300100" else 30
    expected = textbook_synflow(model, sparsity, rounds)
    scores = scores_of(model, sparsity, rounds)
    for n in expected:
        assert torch.equal(scores[n], expected[n]), n
    masks = A.select_masks(scores, sparsity)
    reference = A.select_masks(expected, sparsity)
    assert all(torch.equal(masks[n], reference[n]) for n in masks)


# ------------------------------------------------------------------------------------- float64 where it overflows
def test_a_float32_overflow_is_computed_in_float64_exactly_as_a_float64_model(caplog):
    model = Chain(depth=30)  # ~64^30 = 2^180: beyond float32's 2^128, well inside float64's 2^1024
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger=LOGGER):
        scores = scores_of(model, 0.95, rounds=10)
    expected = scores_of(copy.deepcopy(model).double(), 0.95, rounds=10)  # float64 from the start
    assert all(torch.equal(scores[n], expected[n]) for n in expected)
    assert "overflowed float32 in round 1; computing in float64" in caplog.text
    assert "(in float32, float64 from round 1)" in caplog.text
    # The model is back in float32 with its values.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "efficientnet_b0"])
def test_squeeze_excitation_and_hard_swish_networks_score_finite(name: str):
    # Both gave "scores for parameter '...' contain NaN values" (SE's saturated hard-sigmoid times an overflowed
    # gradient; efficientnet_b0's signal reaches 1e40 in round 1).
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    batch = (torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)))
    scores = A.compute_scores(model, SynFlowCriterion(rounds=4, progress=False), dataloader=[batch], sparsity=0.9)
    assert all(bool(torch.isfinite(s).all()) for s in scores.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ------------------------------------------------------------------------- rescaled outputs where float64 overflows
def test_a_float64_overflow_is_rescaled_by_powers_of_two_and_keeps_a_homogeneous_chains_ranking(caplog):
    deep = Chain(depth=180)  # 64^180 = 2^1080: beyond float64
    with caplog.at_level(logging.INFO, logger=LOGGER):
        scores = scores_of(deep, 0.95, rounds=5)
    assert "overflowed float64 in round 1" in caplog.text
    assert "float64 rescaled per module from round 1" in caplog.text
    # Halving every weight scales every score by the same power of two (2^-180): the same chain at half gain stays
    # inside float64, and its scores, normalized per round, are the rescaled chain's exactly.
    half = copy.deepcopy(deep)
    with torch.no_grad():
        for p in half.parameters():
            p.mul_(0.5)
    expected = scores_of(half, 0.95, rounds=5)
    assert all(torch.equal(scores[n], expected[n]) for n in expected)


# ------------------------------------------------------------------------------------- errors that name the layer
class NaNInForward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-x - 1.0)  # all-ones signal through |w|: x > 0, so NaN everywhere


class NaNInBackward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x - x) + x  # finite forward; d sqrt(u)/du = inf at u = 0, times 0: NaN backward


def small(middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), middle, nn.Linear(8, 2))
    model.example_input_shape = (4,)
    return model


def test_a_nan_in_the_forward_pass_names_the_module_that_made_it():
    with pytest.raises(ValueError, match=r"round 1 is not finite.*forward pass, module '1' \(NaNInForward\) outputs "
                                         r"NaN values"):
        scores_of(small(NaNInForward()), 0.5, rounds=2)


def test_a_nan_in_the_backward_pass_names_where_the_gradient_turns():
    with pytest.raises(ValueError, match=r"backward pass, module '0' \(Linear\) gets from the modules after it a "
                                         r"gradient with NaN values"):
        scores_of(small(NaNInBackward()), 0.5, rounds=2)


def test_non_finite_weights_are_named():
    model = small(nn.ReLU())
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"parameter '2.weight' holds NaN or infinite values"):
        scores_of(model, 0.5, rounds=2)
