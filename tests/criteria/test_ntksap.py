"""NTK-SAP (``autosparse_hf.criteria.ntksap``): the saliency against closed forms, the iterative encoding against an
independent implementation, determinism, freedom from side effects, and the model families."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

import autosparse_hf.criteria.ntksap  # noqa: F401  (registers "ntksap")
from autosparse_hf import compute_scores, get_criterion, get_prunable_parameters, prune_at_init, select_masks
from autosparse_hf.criteria.ntksap import NTKSAPCriterion
from tests.criteria.mixed_state import mixed_state_model as _mixed_state_model

FAST = {"progress": False}


class TwoLayerLinear(nn.Module):
    """``y = W2 W1 x`` without biases."""

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor) -> None:
        super().__init__()
        self.example_input_shape = (w1.shape[1],)
        self.fc1 = nn.Linear(w1.shape[1], w1.shape[0], bias=False)
        self.fc2 = nn.Linear(w2.shape[1], w2.shape[0], bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(w1)
            self.fc2.weight.copy_(w2)

    def forward(self, pixel_values, labels=None):
        return {"logits": self.fc2(self.fc1(pixel_values))}


def rms(w: torch.Tensor) -> float:
    return float(w.double().pow(2).mean().sqrt())


def two_layer_saliency(w1, w2, *, samples, batch, epsilon, seed, resample, input_dtype=None):
    """``|sum over samples of dS/dm|`` at m = 1 for ``f = W2 W1 x``, by the chain rule written out (no autograd):
    with A = W2 * M2, B = W1 * M1, primes for the perturbed weights and D = X B^T A^T - X B'^T A'^T (rows =
    examples), S = ||D||^2 gives dS/dA = 2 D^T X B^T, dS/dA' = -2 D^T X B'^T, dS/dB = 2 A^T D^T X,
    dS/dB' = -2 A'^T D^T X, and dS/dM = W * dS/dA + (W + dW) * dS/dA'. Draws in the order the criterion documents;
    the input is drawn in ``input_dtype`` (default: the weights' dtype), then cast to the weights' dtype."""
    generator = torch.Generator().manual_seed(seed)
    g1, g2 = torch.zeros_like(w1), torch.zeros_like(w2)
    s1, s2 = rms(w1), rms(w2)
    for _ in range(samples):
        x = torch.randn((batch, w1.shape[1]), generator=generator, dtype=input_dtype or w1.dtype).to(w1.dtype)
        if resample:
            t1 = torch.randn(w1.shape, generator=generator, dtype=w1.dtype).mul_(s1)
            t2 = torch.randn(w2.shape, generator=generator, dtype=w2.dtype).mul_(s2)
        else:
            t1, t2 = w1, w2
        d1 = torch.randn(w1.shape, generator=generator, dtype=w1.dtype).mul_(epsilon)
        d2 = torch.randn(w2.shape, generator=generator, dtype=w2.dtype).mul_(epsilon)
        p1, p2 = t1 + d1, t2 + d2
        diff = x @ t1.T @ t2.T - x @ p1.T @ p2.T
        g2 += t2 * (2 * diff.T @ (x @ t1.T)) + p2 * (-2 * diff.T @ (x @ p1.T))
        g1 += t1 * (2 * t2.T @ diff.T @ x) + p1 * (-2 * p2.T @ diff.T @ x)
    return g1.abs(), g2.abs()


@pytest.mark.parametrize("resample", [True, False])
def test_single_round_saliency_matches_the_closed_form(resample):
    generator = torch.Generator().manual_seed(3)
    w1 = torch.randn(4, 3, generator=generator).double()  # exact in float32 too
    w2 = torch.randn(2, 4, generator=generator).double()
    options = {"rounds": 1, "num_samples": 3, "batch_size": 5, "epsilon": 0.1, "seed": 7, "resample_weights": resample}
    # The example input of a plain model is float32: the random input is drawn in float32, then cast to float64.
    s1, s2 = two_layer_saliency(w1, w2, samples=3, batch=5, epsilon=0.1, seed=7, resample=resample,
                                input_dtype=torch.float32)
    model = TwoLayerLinear(w1, w2).double()
    peak = max(float(s1.max()), float(s2.max()))
    scores = compute_scores(model, "ntksap", **options, **FAST)
    # Sparsity 0: every weight survives the one round and scores rounds + s / max(s) = 1 + s / max(s).
    torch.testing.assert_close(scores["fc1.weight"], 1 + s1 / peak)
    torch.testing.assert_close(scores["fc2.weight"], 1 + s2 / peak)
    # Sparsity 0.5: the removed weights score 0.5 * s / max(s), below every survivor, which keep 1 + s / max(s).
    scores = compute_scores(model, "ntksap", sparsity=0.5, **options, **FAST)
    flat_s = torch.cat([s1.flatten(), s2.flatten()])
    flat = torch.cat([scores["fc1.weight"].flatten(), scores["fc2.weight"].flatten()])
    kept = flat >= 1
    assert int(kept.sum()) == round(0.5 * 20)
    torch.testing.assert_close(flat[kept], 1 + flat_s[kept] / peak)
    torch.testing.assert_close(flat[~kept], 0.5 * flat_s[~kept] / peak)
    assert flat_s[kept].min() > flat_s[~kept].max()


def test_closed_form_agrees_with_central_differences():
    """The closed form of the test itself, against central finite differences of S in the mask (float64)."""
    generator = torch.Generator().manual_seed(4)
    w1 = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    w2 = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    g1, g2 = two_layer_saliency(w1, w2, samples=1, batch=4, epsilon=0.2, seed=1, resample=False)
    draws = torch.Generator().manual_seed(1)
    x = torch.randn((4, 2), generator=draws, dtype=torch.float64)
    d1 = torch.randn(w1.shape, generator=draws, dtype=torch.float64).mul_(0.2)
    d2 = torch.randn(w2.shape, generator=draws, dtype=torch.float64).mul_(0.2)

    def objective(m1, m2):
        return float(((x @ (w1 * m1).T @ (w2 * m2).T - x @ ((w1 + d1) * m1).T @ ((w2 + d2) * m2).T) ** 2).sum())

    h = 1e-6
    for grad, shape, which in ((g1, w1.shape, 0), (g2, w2.shape, 1)):
        for i in range(math.prod(shape)):
            bump = torch.zeros(math.prod(shape), dtype=torch.float64)
            bump[i] = h
            bump = bump.reshape(shape)
            ones = [torch.ones_like(w1), torch.ones_like(w2)]
            up, down = list(ones), list(ones)
            up[which], down[which] = ones[which] + bump, ones[which] - bump
            numeric = (objective(*up) - objective(*down)) / (2 * h)
            assert abs(abs(numeric) - float(grad.reshape(-1)[i])) < 1e-5 * max(1.0, abs(numeric))


class MLP(nn.Sequential):
    """Linear-ReLU-Linear-ReLU-Linear with biases (biases are neither masked, perturbed nor re-drawn)."""

    example_input_shape = (6,)

    def __init__(self) -> None:
        super().__init__(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


def reference_ntksap_masks(model, *, rounds, samples, batch, epsilon, seed, sparsity=None, counts=None):
    """Iterative NTK-SAP written out on the MLP's matrices: the documented draws, dS/dm by autograd on a hand-written
    forward pass, the exponential schedule (global or per tensor), stable ties in parameter then position order."""
    layers = [model[0], model[2], model[4]]
    weights = [m.weight.detach() for m in layers]
    biases = [m.bias.detach() for m in layers]
    sigmas = [rms(w) for w in weights]
    masks = [torch.ones_like(w, dtype=torch.bool) for w in weights]
    sizes = [w.numel() for w in weights]
    total = sum(sizes)
    generator = torch.Generator().manual_seed(seed)
    for k in range(1, rounds + 1):
        acc = [torch.zeros_like(w) for w in weights]
        for _ in range(samples):
            x = torch.randn((batch, 6), generator=generator, dtype=torch.float32).to(weights[0].dtype)
            theta = [
                torch.randn(w.shape, generator=generator, dtype=w.dtype).mul_(s)
                for w, s in zip(weights, sigmas, strict=True)
            ]
            delta = [torch.randn(w.shape, generator=generator, dtype=w.dtype).mul_(epsilon) for w in weights]
            m = [mask.to(w.dtype).requires_grad_(True) for mask, w in zip(masks, weights, strict=True)]

            def forward(ws, x=x):
                h = x
                for i, (w, b) in enumerate(zip(ws, biases, strict=True)):
                    h = h @ w.T + b
                    if i < len(ws) - 1:
                        h = torch.relu(h)
                return h

            clean = forward([t * mm for t, mm in zip(theta, m, strict=True)])
            perturbed = forward([(t + d) * mm for t, d, mm in zip(theta, delta, m, strict=True)])
            grads = torch.autograd.grad(((clean - perturbed) ** 2).sum(), m)
            acc = [a + g for a, g in zip(acc, grads, strict=True)]
        saliency = [a.abs() for a in acc]
        if counts is None:
            final = round((1 - sparsity) * total)
            keep = final if k == rounds else round(total * (1 - sparsity) ** (k / rounds))
            alive = torch.cat([mask.flatten() for mask in masks])
            keep = min(max(keep, final), int(alive.sum()))
            dead = torch.tensor(math.inf, dtype=torch.float64)
            key = torch.where(alive, -torch.cat([s.flatten() for s in saliency]), dead)
            new = torch.zeros(total, dtype=torch.bool)
            new[torch.sort(key, stable=True).indices[:keep]] = True
            masks = [part.reshape(w.shape) for part, w in zip(torch.split(new, sizes), weights, strict=True)]
        else:
            for i, (n, c) in enumerate(zip(sizes, counts, strict=True)):
                keep = c if k == rounds else round(n * (c / n) ** (k / rounds))
                keep = min(max(keep, c), int(masks[i].sum()))
                dead = torch.tensor(math.inf, dtype=torch.float64)
                key = torch.where(masks[i].flatten(), -saliency[i].flatten(), dead)
                new = torch.zeros(n, dtype=torch.bool)
                new[torch.sort(key, stable=True).indices[:keep]] = True
                masks[i] = new.reshape(weights[i].shape)
    return masks


def mlp64(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP().double()


def test_global_top_k_of_the_scores_is_the_iterative_mask():
    options = {"rounds": 3, "num_samples": 2, "batch_size": 4, "epsilon": 0.05, "seed": 11}
    expected = reference_ntksap_masks(
        mlp64(), rounds=3, samples=2, batch=4, epsilon=0.05, seed=11, sparsity=0.8
    )
    model = mlp64()
    masks = prune_at_init(model, "ntksap", 0.8, criterion_options={**options, **FAST})
    assert masks.num_kept == round(0.2 * 164)
    for name, mask in zip(["0.weight", "2.weight", "4.weight"], expected, strict=True):
        assert torch.equal(masks[name], mask), name
    # Iterating matters here: one round at the same sparsity gives another mask.
    one_shot = prune_at_init(mlp64(), "ntksap", 0.8, criterion_options={**options, "rounds": 1, **FAST})
    assert any(not torch.equal(one_shot[n], masks[n]) for n in masks)
    # The encoding: survivors score >= rounds, weights removed in round r (1-based) in [r - 1, r - 0.5].
    scores = compute_scores(mlp64(), "ntksap", sparsity=0.8, **options, **FAST)
    flat = torch.cat([s.flatten() for s in scores.values()])
    assert int((flat >= 3).sum()) == masks.num_kept
    assert all(s.dtype == torch.float64 for s in scores.values())


def test_budgets_are_honoured_and_give_the_per_tensor_iterative_mask():
    counts = {"0.weight": 20, "2.weight": 8, "4.weight": 12}  # not one global threshold's split
    options = {"rounds": 3, "num_samples": 1, "batch_size": 4, "epsilon": 0.05, "seed": 2}
    expected = reference_ntksap_masks(mlp64(), rounds=3, samples=1, batch=4, epsilon=0.05, seed=2,
                                      counts=list(counts.values()))
    criterion = NTKSAPCriterion(budgets=counts, **options, **FAST)
    masks = prune_at_init(mlp64(), criterion, 1 - sum(counts.values()) / 164)
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    for name, mask in zip(counts, expected, strict=True):
        assert torch.equal(masks[name], mask), name
    # The allocation's counts (ScoringContext.budgets) are honoured the same way.
    model = mlp64()
    scores = compute_scores(model, "ntksap", sparsity=1 - 40 / 164, budgets=counts, **options, **FAST)
    for name, count in counts.items():
        assert int((scores[name] >= 3).sum()) == count
    with pytest.raises(ValueError, match="budgets lack prunable tensors"):
        compute_scores(model, NTKSAPCriterion(budgets={"0.weight": 20}, **FAST), sparsity=0.8)
    with pytest.raises(ValueError, match=r"budgets\['2.weight'\]"):
        compute_scores(model, "ntksap", sparsity=0.8, budgets={**counts, "2.weight": 81}, **FAST)


def test_same_seed_same_scores_other_seed_other_scores():
    model = mlp64()
    options = {"rounds": 2, "num_samples": 1, "batch_size": 4, **FAST}
    torch.manual_seed(0)
    a = compute_scores(model, "ntksap", sparsity=0.5, seed=1, **options)
    torch.manual_seed(1)  # the global RNG plays no part
    b = compute_scores(model, "ntksap", sparsity=0.5, seed=1, **options)
    c = compute_scores(model, "ntksap", sparsity=0.5, seed=2, **options)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)
    # Multi-sampling: only the tensors' root mean squares matter, not their values.
    shuffled = mlp64()
    with torch.no_grad():
        for p in (shuffled[0].weight, shuffled[2].weight, shuffled[4].weight):
            p.copy_(p.flatten()[torch.randperm(p.numel())].reshape(p.shape))
    d = compute_scores(shuffled, "ntksap", sparsity=0.5, seed=1, **options)
    assert all(torch.allclose(a[n], d[n]) for n in a)
    e = compute_scores(shuffled, "ntksap", sparsity=0.5, seed=1, resample_weights=False, **options)
    assert not all(torch.allclose(a[n], e[n]) for n in a)


def mixed_state_model() -> nn.Module:
    """The shared mixed-state model, its batch norm at momentum 0.3 (NTK-SAP's tests have always used it)."""
    return _mixed_state_model(bn_momentum=0.3)


@pytest.mark.parametrize("calibrate", [True, False])
def test_scoring_has_no_side_effects(calibrate):
    model = mixed_state_model()
    loader = [{"pixel_values": torch.randn(4, 1, 6, 6), "labels": torch.tensor([0, 1, 2, 0])}]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}

    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    scores = compute_scores(model, "ntksap", dataloader=loader, sparsity=0.5, rounds=3, num_samples=2,
                            batch_size=8, calibrate_norm=calibrate, **FAST)
    after = (torch.rand(4), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    assert torch.equal(after[0], torch.rand(4)) and after[1] == random.random() and after[2] == np.random.rand()

    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    for n, p in model.named_parameters():
        assert p.requires_grad == flags[n], n
        assert (p.grad is None) if grads[n] is None else torch.equal(p.grad, grads[n]), n
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert model.bn.momentum == 0.3
    assert list(scores) == ["conv.weight", "fc.weight", "head.weight"]
    for n, s in scores.items():
        assert s.shape == dict(model.named_parameters())[n].shape and torch.isfinite(s).all()
    assert scores["fc.weight"].abs().sum() > 0  # the frozen weight was scored


def test_batch_norm_calibration_uses_the_random_batch_statistics():
    options = {"rounds": 1, "num_samples": 1, "batch_size": 8, **FAST}
    a = mixed_state_model()
    b = mixed_state_model()
    with torch.no_grad():
        b.bn.running_mean.fill_(5.0)
        b.bn.running_var.fill_(9.0)
    calibrated = [compute_scores(m, "ntksap", **options) for m in (a, b)]
    stored = [compute_scores(m, "ntksap", calibrate_norm=False, **options) for m in (a, b)]
    assert all(torch.equal(calibrated[0][n], calibrated[1][n]) for n in calibrated[0])  # stored stats overwritten
    assert not all(torch.allclose(stored[0][n], stored[1][n]) for n in stored[0])
    assert not all(torch.allclose(calibrated[0][n], stored[0][n]) for n in stored[0])


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    model.example_input_shape = (20,)
    return model


def test_exact_count_with_and_without_data():
    options = {"rounds": 4, "num_samples": 2, "batch_size": 8, **FAST}
    free = prune_at_init(small_mlp(), "ntksap", 0.9, criterion_options=options)
    total = 20 * 32 + 32 * 32 + 32 * 5
    assert free.num_kept == round(0.1 * total)
    # With data only the example shape is read: any batch of that shape gives the same masks.
    loader = [{"pixel_values": torch.randn(3, 20) * 100, "labels": torch.tensor([0, 1, 2])}]
    with_data = prune_at_init(small_mlp(), "ntksap", 0.9, loader, criterion_options=options)
    assert with_data.num_kept == free.num_kept
    assert all(torch.equal(with_data[n], free[n]) for n in free)


def assert_scores_usable(model, masks, scores):
    assert all(torch.isfinite(s).all() for s in scores.values())
    total = sum(m.numel() for m in masks.values())
    assert masks.num_kept == round(0.1 * total)
    emptied = [n for n, m in masks.items() if not m.any()]
    assert not emptied, emptied


def test_timm_resnet():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    loader = [{"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 1])}]
    options = {"rounds": 2, "num_samples": 1, "batch_size": 4, **FAST}
    scores = compute_scores(model, "ntksap", dataloader=loader, sparsity=0.9, **options)
    masks = select_masks(scores, 0.9)  # what prune_at_init keeps (global budgets)
    assert_scores_usable(model, masks, scores)


def test_gpt2_token_model_scores_through_inputs_embeds():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    options = {"rounds": 3, "num_samples": 1, "batch_size": 4, **FAST}
    scores = compute_scores(model, "ntksap", sparsity=0.9, **options)
    assert set(scores) == set(get_prunable_parameters(model))
    masks = prune_at_init(model, "ntksap", 0.9, criterion_options=options)
    assert_scores_usable(model, masks, scores)


def test_token_model_scores_the_same_holding_one_weight_set_or_two(monkeypatch):
    # A token model whose outputs outgrow a weight set takes the two-set form (each pass recomputes the other set's
    # outputs without a graph, attention included); forcing the one-set form (outputs kept, the clean weights re-drawn)
    # must give the same scores, bit for bit.
    from transformers import GPT2Config, GPT2LMHeadModel

    from autosparse_hf.criteria import ntksap, ntksap_passes

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    options = {"rounds": 2, "num_samples": 2, "batch_size": 12, "micro_batch_size": 4, **FAST}
    sets = []
    monkeypatch.setattr(ntksap, "add_draw", lambda *a: sets.append(ntksap_passes.add_draw(*a)) or sets[-1])
    two = compute_scores(model, "ntksap", sparsity=0.9, **options)
    assert set(sets) == {2}
    sets.clear()
    monkeypatch.setattr(ntksap_passes, "ONE_SET_OUTPUT_RATIO", math.inf)
    one = compute_scores(model, "ntksap", sparsity=0.9, **options)
    assert set(sets) == {1}
    for n in two:
        assert torch.equal(one[n], two[n]), n


def test_plain_torch_mlp():
    model = small_mlp()
    options = {"rounds": 5, "num_samples": 2, "batch_size": 8, **FAST}
    scores = compute_scores(model, "ntksap", sparsity=0.9, **options)
    masks = prune_at_init(model, "ntksap", 0.9, criterion_options=options)
    assert_scores_usable(model, masks, scores)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("rounds", 0),
        ("rounds", 2.5),
        ("num_samples", 0),
        ("batch_size", -1),
        ("batch_size", True),
        ("epsilon", 0.0),
        ("epsilon", float("nan")),
        ("epsilon", "0.01"),
        ("resample_weights", "yes"),
        ("calibrate_norm", 1),
        ("seed", -1),
        ("seed", 1.5),
        ("progress", "on"),
        ("budgets", {"fc.weight": -3}),
        ("budgets", [1, 2]),
    ],
)
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        get_criterion("ntksap", **{option: value})


def test_unknown_option_lists_the_options():
    with pytest.raises(ValueError, match="epsilon"):
        get_criterion("ntksap", eps=0.1)


def test_micro_batches_give_the_same_scores_as_whole_draws():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))
    model.example_input_shape = (6,)
    whole = compute_scores(model, "ntksap", sparsity=0.8, rounds=2, num_samples=2, batch_size=10)
    split = compute_scores(model, "ntksap", sparsity=0.8, rounds=2, num_samples=2, batch_size=10, micro_batch_size=3)
    for n in whole:
        assert torch.allclose(whole[n], split[n], rtol=1e-4, atol=1e-6), n
    assert select_masks(whole, 0.8).num_kept == select_masks(split, 0.8).num_kept
    with pytest.raises(ValueError, match="micro_batch_size"):
        get_criterion("ntksap", micro_batch_size=0)


class TanhNet(nn.Module):
    """A nonlinear model with biases (not closed-form): ``W3 tanh(W2 tanh(W1 x + b1) + b2)``."""

    example_input_shape = (5,)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 7), nn.Linear(7, 6), nn.Linear(6, 3)

    def forward(self, pixel_values, labels=None):
        return {"logits": self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(pixel_values)))))}


def mask_gradient_saliency(model, existing, *, samples, batch, epsilon, seed, resample=True, halves=True):
    """One round's ``|sum of dS/dm|`` the direct way: a float mask leaf ``m`` multiplies ``theta`` and
    ``theta + dtheta`` (both kept), the gradient is taken with respect to ``m``; same draws as the criterion.
    ``halves``: the mask gradient of each weight set's half (the other set's output held constant), added to the sum
    perturbed half first, as the criterion adds them; else one gradient of the whole objective."""
    from torch.func import functional_call

    from autosparse_hf import get_family
    from autosparse_hf.criteria.ntksap_sampling import random_inputs

    params = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    template = get_family(model).synflow_inputs(model, None)
    generator = torch.Generator().manual_seed(seed)
    sigma = {n: float(p.detach()[existing[n]].double().pow(2).mean().sqrt()) for n, p in params.items()}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for _ in range(samples):
        inputs = random_inputs(template, batch, generator)
        theta = {
            n: torch.randn(p.shape, generator=generator).mul_(sigma[n]) if resample else p.detach()
            for n, p in params.items()
        }
        delta = {n: torch.randn(p.shape, generator=generator).mul_(epsilon) for n, p in params.items()}

        def output(weights, masks, pixels=inputs["pixel_values"]):
            return functional_call(model, {n: weights[n] * masks[n] for n in params}, (pixels,))["logits"]

        def leaves():
            return {n: existing[n].float().requires_grad_(True) for n in params}

        perturbed_weights = {n: theta[n] + delta[n] for n in params}
        if halves:
            masks = leaves()
            objective = (output(theta, existing).detach() - output(perturbed_weights, masks)).pow(2).sum()
            for n, g in zip(params, torch.autograd.grad(objective, list(masks.values())), strict=True):
                total[n] += g
            masks = leaves()
            objective = (output(theta, masks) - output(perturbed_weights, existing).detach()).pow(2).sum()
        else:
            masks = leaves()
            objective = (output(theta, masks) - output(perturbed_weights, masks)).pow(2).sum()
        for n, g in zip(params, torch.autograd.grad(objective, list(masks.values())), strict=True):
            total[n] += g
    return {n: g.abs() for n, g in total.items()}


@pytest.mark.parametrize("resample", [True, False])
@pytest.mark.parametrize("batch", [4, 64])
def test_saliency_from_the_weight_sets_is_the_mask_gradient_bit_for_bit(resample, batch, monkeypatch):
    # The criterion keeps only theta * m and (theta + dtheta) * m and takes the gradient with respect to them, one
    # set's pass at a time; at the surviving weights that is the mask's own gradient of each half, to the bit (the
    # same products, summed in the same order), whether the draw holds one weight set (4 examples: the outputs are
    # smaller than a set, the clean weights are re-drawn after the perturbed pass) or two (64 examples).
    from autosparse_hf.criteria import ntksap, ntksap_passes

    model = TanhNet()
    generator = torch.Generator().manual_seed(0)
    existing = {n: torch.rand(p.shape, generator=generator) > 0.3 for n, p in model.named_parameters()
                if n.endswith("weight")}
    sets = []
    monkeypatch.setattr(ntksap, "add_draw", lambda *a: sets.append(ntksap_passes.add_draw(*a)) or sets[-1])
    options = {"rounds": 1, "num_samples": 3, "batch_size": batch, "epsilon": 0.05, "seed": 11, **FAST}
    scores = compute_scores(model, "ntksap", existing=existing, resample_weights=resample, **options)
    assert sets == [1 if batch == 4 else 2] * 3
    expected = mask_gradient_saliency(model, existing, samples=3, batch=batch, epsilon=0.05, seed=11,
                                      resample=resample)
    joint = mask_gradient_saliency(model, existing, samples=3, batch=batch, epsilon=0.05, seed=11,
                                   resample=resample, halves=False)
    peak = max(float(s[existing[n]].max()) for n, s in expected.items())
    for n, s in expected.items():
        alive = existing[n]
        assert torch.equal(scores[n][alive], 1 + s[alive].double() / peak), n  # survivors: rounds + s / max(s)
        assert bool((scores[n][~alive] == -1).all()), n
        torch.testing.assert_close(s, joint[n], rtol=1e-5, atol=1e-7)  # the whole objective's gradient, rounded


def test_survivor_peak_reads_only_the_survivors_and_rejects_a_non_finite_one(monkeypatch):
    from autosparse_hf.criteria import buffers
    from autosparse_hf.criteria.ntksap_record import survivor_peak

    alive = {"a": torch.tensor([True, False, True]), "b": torch.tensor([False, False])}
    # The entries of pruned weights hold earlier rounds' saliencies (the record): never the peak.
    saliency = {"a": torch.tensor([0.5, 7.0, 2.0]), "b": torch.tensor([9.0, 0.0])}
    assert survivor_peak(saliency, alive, 1) == 2.0
    monkeypatch.setattr(buffers, "FINISH_CHUNK", 2)  # read in chunks that split the tensors: the same peak
    assert survivor_peak(saliency, alive, 1) == 2.0
    # Non-finite at a survivor: an error naming the tensor and the round.
    with pytest.raises(ValueError, match=r"round 3 for 'a'"):
        survivor_peak({"a": torch.tensor([0.0, 0.0, float("nan")]), "b": torch.zeros(2)}, alive, 3)
    with pytest.raises(ValueError, match=r"round 3 for 'a'"):
        survivor_peak({"a": torch.tensor([float("inf"), 0.0, 1.0]), "b": torch.zeros(2)}, alive, 3)
    assert survivor_peak({"a": torch.zeros(3), "b": torch.zeros(2)}, alive, 1) == 0.0


def test_a_non_finite_gradient_at_a_pruned_weight_leaves_the_record_alone(monkeypatch):
    # The round's sums are written into the saliency record at the survivors only: a pruned weight's product (0 times
    # its gradient) that is NaN must not reach its recorded saliency.
    model = TanhNet()
    generator = torch.Generator().manual_seed(0)
    existing = {n: torch.rand(p.shape, generator=generator) > 0.3 for n, p in model.named_parameters()
                if n.endswith("weight")}
    options = {"rounds": 2, "num_samples": 1, "batch_size": 4, "seed": 3, **FAST}
    clean = compute_scores(model, "ntksap", existing=existing, sparsity=0.8, **options)
    original = torch.Tensor.register_post_accumulate_grad_hook

    def poisoned(self, hook):
        # Before each fold: NaN gradients at the weight set's zeros (the pruned weights), as an overflow would give.
        def wrapped(leaf):
            leaf.grad.masked_fill_(leaf.detach() == 0, float("nan"))
            return hook(leaf)

        return original(self, wrapped)

    monkeypatch.setattr(torch.Tensor, "register_post_accumulate_grad_hook", poisoned)
    poisoned_scores = compute_scores(model, "ntksap", existing=existing, sparsity=0.8, **options)
    for n in clean:
        assert torch.equal(clean[n], poisoned_scores[n]), n


def test_the_float64_encoding_in_chunks_is_the_whole_tensor_encoding(monkeypatch):
    # NTK-SAP writes its float64 scores chunk by chunk (bounded temporaries on large tensors): chunks that split
    # every tensor, with weights pruned before scoring, must give the one-chunk scores bit for bit.
    import autosparse_hf.criteria.buffers as buffers

    model = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.ReLU(), torch.nn.Linear(9, 4))
    existing = {"0.weight": torch.rand(9, 6, generator=torch.Generator().manual_seed(0)) > 0.3,
                "2.weight": torch.ones(4, 9, dtype=torch.bool)}  # fmt: skip
    options = {"rounds": 3, "num_samples": 2, "batch_size": 4, "progress": False}
    batch = {"pixel_values": torch.randn(2, 6), "labels": torch.tensor([0, 1])}
    whole = compute_scores(model, "ntksap", dataloader=[batch], sparsity=0.7, existing=existing, **options)
    monkeypatch.setattr(buffers, "FINISH_CHUNK", 7)
    chunked = compute_scores(model, "ntksap", dataloader=[batch], sparsity=0.7, existing=existing, **options)
    for n in whole:
        assert chunked[n].dtype == torch.float64 and torch.equal(chunked[n], whole[n]), n
    assert bool((whole["0.weight"][~existing["0.weight"]] == -1).all())
