"""Criteria (``autosparse_hf.criteria``): known values on hand-checkable models, and freedom from side effects."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import autosparse_hf
from autosparse_hf import compute_scores, get_criterion, list_criteria, prune_at_init
from tests.criteria.mixed_state import mixed_state_model

BASELINES = ("grasp", "magnitude", "random", "snip", "synflow")




class TwoLayerLinear(nn.Module):
    """``y = W2 W1 x`` without biases; MSE loss against ``labels``."""

    example_input_shape = (2,)

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor) -> None:
        super().__init__()
        self.fc1 = nn.Linear(w1.shape[1], w1.shape[0], bias=False)
        self.fc2 = nn.Linear(w2.shape[1], w2.shape[0], bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(w1)
            self.fc2.weight.copy_(w2)

    def forward(self, pixel_values, labels=None):
        out = self.fc2(self.fc1(pixel_values))
        loss = nn.functional.mse_loss(out.squeeze(-1), labels) if labels is not None else None
        return {"loss": loss, "logits": out}


W1 = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0]])
W2 = torch.tensor([[2.0, -1.0, 0.5]])
BATCHES = [
    {"pixel_values": torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -1.0]]), "labels": torch.tensor([1.0, -2.0, 0.5])},
    {"pixel_values": torch.tensor([[0.2, 0.1], [2.0, -1.5]]), "labels": torch.tensor([0.0, 3.0])},
]


def hand_gradients(w1, w2, batch):
    """dL/dW1, dL/dW2 of L = mean((W2 W1 x - y)^2), by the chain rule written out (no autograd)."""
    x, y = batch["pixel_values"], batch["labels"]
    n = x.shape[0]
    hidden = x @ w1.T  # (n, 3)
    residual = (hidden @ w2.T)[:, 0] - y  # (n,)
    grad_w2 = (2 / n) * (residual @ hidden)[None, :]  # (1, 3)
    grad_w1 = (2 / n) * w2.T @ (residual @ x)[None, :]  # (3, 2)
    return grad_w1, grad_w2


def test_list_criteria_has_the_five_baselines():
    assert set(BASELINES) <= set(list_criteria())
    assert list_criteria() == sorted(list_criteria())


def test_unknown_criterion_lists_the_known_ones():
    model = TwoLayerLinear(W1, W2)
    with pytest.raises(ValueError, match="nope") as info:
        compute_scores(model, "nope")
    for name in list_criteria():
        assert name in str(info.value)


def test_options_with_an_instance_and_bad_synflow_rounds_are_errors():
    with pytest.raises(ValueError, match="options"):
        get_criterion(get_criterion("synflow"), rounds=3)
    with pytest.raises(ValueError, match="rounds"):
        get_criterion("synflow", rounds=0)


@pytest.mark.parametrize("name", ["snip", "grasp"])
def test_data_dependent_criterion_without_data_is_a_clear_error(name):
    model = TwoLayerLinear(W1, W2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"{name}.*dataloader"):
        compute_scores(model, name)
    with pytest.raises(ValueError, match=f"{name}.*dataloader"):
        prune_at_init(model, name, 0.5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_magnitude_is_absolute_weight():
    scores = compute_scores(TwoLayerLinear(W1, W2), "magnitude")
    assert list(scores) == ["fc1.weight", "fc2.weight"]
    assert torch.equal(scores["fc1.weight"], W1.abs())
    assert torch.equal(scores["fc2.weight"], W2.abs())


def test_snip_is_abs_weight_times_gradient():
    model = TwoLayerLinear(W1, W2)
    # Stale gradients and a frozen weight must not change the scores.
    model.fc1.weight.grad = torch.full_like(W1, 100.0)
    model.fc2.weight.requires_grad_(False)
    g1, g2 = hand_gradients(W1, W2, BATCHES[0])
    scores = compute_scores(model, "snip", dataloader=BATCHES, num_batches=1)
    torch.testing.assert_close(scores["fc1.weight"], (W1 * g1).abs())
    torch.testing.assert_close(scores["fc2.weight"], (W2 * g2).abs())
    # Two batches: the gradient is the mean of the per-batch gradients.
    h1, h2 = hand_gradients(W1, W2, BATCHES[1])
    scores = compute_scores(model, "snip", dataloader=BATCHES, num_batches=2)
    torch.testing.assert_close(scores["fc1.weight"], (W1 * (g1 + h1) / 2).abs())
    torch.testing.assert_close(scores["fc2.weight"], (W2 * (g2 + h2) / 2).abs())


def mean_loss(theta: torch.Tensor, batches) -> torch.Tensor:
    w1, w2 = theta[:6].reshape(3, 2), theta[6:].reshape(1, 3)
    losses = [((b["pixel_values"] @ w1.T @ w2.T)[:, 0] - b["labels"]).pow(2).mean() for b in batches]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("num_batches", [1, 2])
def test_grasp_is_weight_times_hessian_gradient_product(num_batches):
    batches = BATCHES[:num_batches]
    theta = torch.cat([W1.flatten(), W2.flatten()])
    hessian = torch.autograd.functional.hessian(lambda t: mean_loss(t, batches), theta)
    grads = [hand_gradients(W1, W2, b) for b in batches]
    gradient = torch.cat([sum(g[0] for g in grads).flatten(), sum(g[1] for g in grads).flatten()]) / num_batches
    expected = theta * (hessian @ gradient)
    assert expected.abs().max() > 0 and (expected < 0).any() and (expected > 0).any()  # a non-trivial check
    scores = compute_scores(TwoLayerLinear(W1, W2), "grasp", dataloader=batches, num_batches=num_batches)
    torch.testing.assert_close(scores["fc1.weight"], expected[:6].reshape(3, 2))
    torch.testing.assert_close(scores["fc2.weight"], expected[6:].reshape(1, 3))


def synflow_by_hand(a1: torch.Tensor, a2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|w * dR/dw| for R = 1^T a2 a1 1 with non-negative a1, a2 (absolute, masked weights)."""
    s1 = a1 * a2.sum(0)[:, None]  # dR/da1[i, j] = sum_k a2[k, i]
    s2 = a2 * a1.sum(1)[None, :]  # dR/da2[k, i] = sum_j a1[i, j]
    return s1, s2


def test_synflow_single_round_scores():
    s1, s2 = synflow_by_hand(W1.abs(), W2.abs())
    peak = torch.cat([s1.flatten(), s2.flatten()]).max()
    # Nothing pruned (sparsity 0): every weight survives and scores rounds + s / max(s) = 1 + s / max(s).
    scores = compute_scores(TwoLayerLinear(W1, W2), "synflow", rounds=1)
    torch.testing.assert_close(scores["fc1.weight"].float(), 1 + s1 / peak)
    torch.testing.assert_close(scores["fc2.weight"].float(), 1 + s2 / peak)
    # At sparsity 0.5 the removed weights score 0.5 * s / max(s), below every survivor; the order is the order of s.
    scores = compute_scores(TwoLayerLinear(W1, W2), "synflow", rounds=1, sparsity=0.5)
    flat_s = torch.cat([s1.flatten(), s2.flatten()])
    flat = torch.cat([scores["fc1.weight"].flatten(), scores["fc2.weight"].flatten()]).float()
    kept = flat >= 1
    assert int(kept.sum()) == round(0.5 * 9)
    torch.testing.assert_close(flat[kept], 1 + flat_s[kept] / peak)
    torch.testing.assert_close(flat[~kept], 0.5 * flat_s[~kept] / peak)
    assert flat_s[kept].min() > flat_s[~kept].max()


def iterative_synflow_mask(w1, w2, sparsity, rounds):
    """Iterative SynFlow with the exponential schedule, closed-form scores, stable ties in parameter order."""
    a1, a2 = w1.abs().double(), w2.abs().double()
    m1, m2 = torch.ones_like(a1, dtype=torch.bool), torch.ones_like(a2, dtype=torch.bool)
    total = a1.numel() + a2.numel()
    for k in range(1, rounds + 1):
        s1, s2 = synflow_by_hand(a1 * m1, a2 * m2)
        alive = torch.cat([m1.flatten(), m2.flatten()])
        density = min((1 - sparsity) ** (k / rounds), int(alive.sum()) / total)
        keep = round(density * total)
        key = torch.where(
            alive, -torch.cat([s1.flatten(), s2.flatten()]), torch.tensor(float("inf"), dtype=torch.float64)
        )
        chosen = torch.sort(key, stable=True).indices[:keep]
        new = torch.zeros(total, dtype=torch.bool)
        new[chosen] = True
        m1, m2 = new[: a1.numel()].reshape(a1.shape), new[a1.numel() :].reshape(a2.shape)
    return m1, m2


@pytest.mark.parametrize("sparsity", [0.8, 0.95])
def test_synflow_hundred_rounds_top_k_equals_the_iterative_mask(sparsity):
    generator = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(12, 10, generator=generator), torch.randn(5, 12, generator=generator)
    expected1, expected2 = iterative_synflow_mask(w1, w2, sparsity, 100)
    model = TwoLayerLinear(w1, w2)
    model.example_input_shape = (10,)
    masks = prune_at_init(model, "synflow", sparsity, criterion_options={"rounds": 100})
    assert masks.num_kept == round((1 - sparsity) * 180)
    assert torch.equal(masks["fc1.weight"], expected1)
    assert torch.equal(masks["fc2.weight"], expected2)
    # The iterative mask differs from one-shot SynFlow here (otherwise the test would not tell them apart).
    one_shot = prune_at_init(
        TwoLayerLinear(w1, w2),
        "synflow",
        sparsity,
        dataloader=[{"pixel_values": torch.ones(1, 10)}],
        criterion_options={"rounds": 1},
    )
    assert not (torch.equal(one_shot["fc1.weight"], expected1) and torch.equal(one_shot["fc2.weight"], expected2))


def iterative_synflow_mask_in_budgets(w1, w2, counts, rounds):
    """Iterative SynFlow inside per-tensor budgets: tensor l keeps round(n_l (c_l / n_l)^(k / rounds)) weights after
    round k (c_l at the last), the top closed-form scores among its alive weights, stable ties in position order."""
    a = [w1.abs().double(), w2.abs().double()]
    m = [torch.ones_like(x, dtype=torch.bool) for x in a]
    for k in range(1, rounds + 1):
        s = synflow_by_hand(a[0] * m[0], a[1] * m[1])
        for i in range(2):
            n = a[i].numel()
            keep = counts[i] if k == rounds else round(n * (counts[i] / n) ** (k / rounds))
            keep = min(max(keep, counts[i]), int(m[i].sum()))
            key = torch.where(m[i].flatten(), -s[i].flatten(), torch.tensor(float("inf"), dtype=torch.float64))
            new = torch.zeros(n, dtype=torch.bool)
            new[torch.sort(key, stable=True).indices[:keep]] = True
            m[i] = new.reshape(a[i].shape)
    return m


@pytest.mark.parametrize("rounds", [1, 20])
def test_synflow_inside_budgets_equals_the_per_tensor_iterative_mask(rounds):
    from autosparse_hf.criteria.synflow import SynFlowCriterion

    generator = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(12, 10, generator=generator), torch.randn(5, 12, generator=generator)
    counts = [30, 6]  # 25% of fc1, 10% of fc2: not what one global threshold would give
    expected = iterative_synflow_mask_in_budgets(w1, w2, counts, rounds)
    criterion = SynFlowCriterion(rounds=rounds, budgets={"fc1.weight": counts[0], "fc2.weight": counts[1]})
    model = TwoLayerLinear(w1, w2)
    model.example_input_shape = (10,)
    masks = prune_at_init(model, criterion, 1 - sum(counts) / 180)
    assert [int(masks["fc1.weight"].sum()), int(masks["fc2.weight"].sum())] == counts
    assert torch.equal(masks["fc1.weight"], expected[0]) and torch.equal(masks["fc2.weight"], expected[1])
    other = TwoLayerLinear(w1, w2)
    other.example_input_shape = (10,)
    global_masks = prune_at_init(other, SynFlowCriterion(rounds=rounds), 1 - sum(counts) / 180)
    assert int(global_masks["fc1.weight"].sum()) != counts[0]  # the budgets, not SynFlow's own split, decided
    with pytest.raises(ValueError, match="budgets lack prunable tensors"):
        compute_scores(model, SynFlowCriterion(budgets={"fc1.weight": 30}), sparsity=0.8)


def test_random_scores_range_and_seeds():
    model = TwoLayerLinear(torch.randn(40, 2), torch.randn(1, 40))
    seeded = compute_scores(model, "random", seed=1)
    assert all(((s >= 0) & (s < 1)).all() for s in seeded.values())
    assert torch.equal(compute_scores(model, "random", seed=1)["fc1.weight"], seeded["fc1.weight"])
    assert not torch.equal(compute_scores(model, "random", seed=2)["fc1.weight"], seeded["fc1.weight"])
    torch.manual_seed(0)
    a = compute_scores(model, "random")
    torch.manual_seed(1)
    b = compute_scores(model, "random")
    torch.manual_seed(0)
    c = compute_scores(model, "random")
    assert not torch.equal(a["fc1.weight"], b["fc1.weight"])
    assert torch.equal(a["fc1.weight"], c["fc1.weight"]) and torch.equal(a["fc2.weight"], c["fc2.weight"])


def make_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    examples = [
        {"pixel_values": torch.randn(1, 6, 6, generator=generator), "labels": torch.tensor(i % 3)} for i in range(8)
    ]
    return DataLoader(examples, batch_size=4, shuffle=True)  # shuffling draws from torch's global RNG


def autos_options(model: nn.Module) -> dict:
    from autosparse_hf import AutoSConfig, AutoSModel

    torch.manual_seed(5)
    return {"predictor": AutoSModel(AutoSConfig(hidden_sizes=(8,), feature_num_batches=2))}  # untrained is enough


def ticket_options(model: nn.Module) -> dict:
    from autosparse_hf.records import IRPTicketSource

    generator = torch.Generator().manual_seed(5)
    params = autosparse_hf.get_prunable_parameters(model)
    return {
        "source": IRPTicketSource(
            cycle_pruned={n: torch.randint(1, 4, p.param.shape, generator=generator) for n, p in params.items()},
            w0={n: torch.randn(p.param.shape, generator=generator) for n, p in params.items()},
            shapes={n: tuple(p.param.shape) for n, p in params.items()},
            cycles=2,  # level 3 = survived both cycles: about a third of the weights, below the density 0.5 asked
        )
    }


# Criteria that cannot be built without options (any "autos*" variant takes a predictor); any other registered
# criterion must work with none: extend this table when a new one needs options.
CRITERION_OPTIONS = {
    "synflow": lambda model: {"rounds": 3},
    "autos": autos_options,
    "ticket": ticket_options,
}


def criterion_options(name: str, model: nn.Module) -> dict:
    if name in CRITERION_OPTIONS:
        return CRITERION_OPTIONS[name](model)
    return autos_options(model) if name.startswith("autos") else {}


@pytest.mark.parametrize("name", ["snip", "grasp", "iter_snip"])
def test_a_dataloader_shorter_than_num_batches_records_the_batches_it_had(name):
    loader = make_loader()  # two batches
    masks = prune_at_init(mixed_state_model(), name, 0.5, loader, num_batches=5,
                          criterion_options={"steps": 2} if name == "iter_snip" else {})
    assert masks.metadata["num_batches"] == 2
    masks = prune_at_init(mixed_state_model(), name, 0.5, loader, num_batches=1,
                          criterion_options={"steps": 2} if name == "iter_snip" else {})
    assert masks.metadata["num_batches"] == 1


@pytest.mark.parametrize("name", list_criteria())
def test_scoring_has_no_side_effects(name):
    model = mixed_state_model()
    loader = make_loader()
    options = criterion_options(name, model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}

    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    scores = compute_scores(model, name, dataloader=loader, num_batches=2, sparsity=0.5, **options)
    after = (torch.rand(4), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    assert torch.equal(after[0], torch.rand(4)) and after[1] == random.random() and after[2] == np.random.rand()

    new_state = model.state_dict()
    assert set(new_state) == set(state)
    for key, value in state.items():
        assert torch.equal(new_state[key], value), key
    for n, p in model.named_parameters():
        assert p.requires_grad == flags[n], n
        if grads[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads[n]), n
    assert {n: m.training for n, m in model.named_modules()} == modes

    assert list(scores) == ["conv.weight", "fc.weight", "head.weight"]
    params = dict(model.named_parameters())
    for n, s in scores.items():
        assert s.shape == params[n].shape and s.dtype in (torch.float32, torch.float64) and torch.isfinite(s).all()
    if name != "random":
        assert scores["fc.weight"].abs().sum() > 0  # the frozen weight was scored, not skipped
    # The scores are not views of the weights: changing the model afterwards does not change them.
    snapshot = {n: s.clone() for n, s in scores.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(scores[n], snapshot[n]) for n in scores)


def test_public_api_exports_the_criteria_helpers():
    for attr in ("compute_scores", "get_criterion", "list_criteria", "register_criterion", "Criterion"):
        assert hasattr(autosparse_hf, attr)


def tiny_gpt2():
    """A two-layer GPT-2 (attention, tied embedding, layer norms) and two batches of token ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16))
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(2):
        ids = torch.randint(0, 50, (2, 12), generator=g)
        batches.append({"input_ids": ids, "labels": ids.clone()})
    return model, batches


def test_snip_gradients_are_a_full_backward_pass_bit_for_bit():
    # SNIP's pass forms gradients for the prunable weights only (not the embedding's nor the biases'); they are the
    # gradients a backward pass over every parameter computes, to the bit.
    model, batches = tiny_gpt2()
    names = list(autosparse_hf.get_prunable_parameters(model))
    params = dict(model.named_parameters())
    model.eval()
    model(**batches[0]).loss.backward()
    expected = {n: (params[n].detach() * params[n].grad).abs() for n in names}
    model.zero_grad(set_to_none=True)
    scores = compute_scores(model, "snip", dataloader=batches, num_batches=1)
    assert all(torch.equal(scores[n], expected[n]) for n in names)
    assert all(p.grad is None for p in model.parameters())


def grasp_by_separate_passes(model, batches):
    """w * (H g) the textbook way: g by a backward pass over every parameter, then per batch a double backward of
    g . dL/dw (attention on its math kernel, which has one)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = list(autosparse_hf.get_prunable_parameters(model))
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    model.eval()
    for batch in batches:
        (model(**batch).loss / len(batches)).backward()
    g = [w.grad.detach().clone() for w in weights]
    model.zero_grad(set_to_none=True)
    hessian_grad = [torch.zeros_like(w) for w in weights]
    for batch in batches:
        with sdpa_kernel(SDPBackend.MATH):
            first = torch.autograd.grad(model(**batch).loss / len(batches), weights, create_graph=True)
            dot = sum((f * v).sum() for f, v in zip(first, g, strict=True))
            for acc, h in zip(hessian_grad, torch.autograd.grad(dot, weights), strict=True):
                acc.add_(h)
    return {n: w.detach() * h for n, w, h in zip(names, weights, hessian_grad, strict=True)}


@pytest.mark.parametrize("num_batches", [1, 2])
def test_grasp_memory_lean_passes_equal_the_textbook_passes(num_batches):
    # With one batch g is the first-order gradient of the double-backward pass itself (attention on the math
    # kernel there, not in a separate pass): equal to rounding. With several, g is a separate pass, as before: equal
    # to the bit.
    model, batches = tiny_gpt2()
    batches = batches[:num_batches]
    expected = grasp_by_separate_passes(model, batches)
    scores = compute_scores(model, "grasp", dataloader=batches, num_batches=num_batches)
    for n, value in expected.items():
        if num_batches == 1:
            torch.testing.assert_close(scores[n], value, rtol=1e-5, atol=1e-6 * float(value.abs().max()))
        else:
            assert torch.equal(scores[n], value), n
