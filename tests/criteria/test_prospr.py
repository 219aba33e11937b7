"""ProsPr (``autosparse_hf.criteria.prospr``): meta-gradients against an independent unrolled computation, SNIP as
its small-step limit, freedom from side effects, and any model family."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

import autosparse_hf.criteria.prospr  # noqa: F401  (registers "prospr")
from autosparse_hf import compute_scores, get_criterion, get_prunable_parameters, prune_at_init
from autosparse_hf.criteria.prospr import ProsPrCriterion
from autosparse_hf.masks import num_to_keep
from tests.criteria.mixed_state import mixed_state_model


class TwoLayerLinear(nn.Module):
    """``y = W2 W1 x`` without biases; MSE loss against ``labels``."""

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
    {"pixel_values": torch.tensor([[-0.5, 1.0], [1.5, 0.5], [0.0, -2.0]]), "labels": torch.tensor([2.0, -1.0, 1.0])},
    {"pixel_values": torch.tensor([[0.7, -0.3], [-1.2, -0.4]]), "labels": torch.tensor([-1.0, 0.5])},
]
LR = 0.02


def hand_gradients(w1, w2, batch):
    """dL/dW1, dL/dW2 of L = mean((W2 W1 x - y)^2), by the chain rule written out (no autograd)."""
    x, y = batch["pixel_values"].to(w1.dtype), batch["labels"].to(w1.dtype)
    n = x.shape[0]
    hidden = x @ w1.T
    residual = (hidden @ w2.T)[:, 0] - y
    return (2 / n) * w2.T @ (residual @ x)[None, :], (2 / n) * (residual @ hidden)[None, :]


def hand_loss(w1, w2, batch):
    x, y = batch["pixel_values"].to(w1.dtype), batch["labels"].to(w1.dtype)
    return ((x @ w1.T @ w2.T)[:, 0] - y).pow(2).mean()


def unrolled(c1, c2, batches, steps, lr):
    """The masked weights after ``steps`` hand-written SGD steps, and the meta-loss averaged over the rest."""
    w1, w2 = W1.double() * c1, W2.double() * c2
    for batch in batches[:steps]:
        g1, g2 = hand_gradients(w1, w2, batch)
        w1, w2 = w1 - lr * g1, w2 - lr * g2
    meta = batches[steps:]
    return w1, w2, sum(hand_loss(w1, w2, b) for b in meta) / len(meta)


def finite_difference_meta_gradient(batches, steps, lr, eps=1e-6):
    """dL/dc by central differences on every mask entry, in float64 (independent of autograd)."""
    c = torch.ones(W1.numel() + W2.numel(), dtype=torch.float64)
    grad = torch.zeros_like(c)
    for i in range(c.numel()):
        values = []
        for sign in (1.0, -1.0):
            shifted = c.clone()
            shifted[i] += sign * eps
            values.append(unrolled(shifted[:6].reshape(3, 2), shifted[6:].reshape(1, 3), batches, steps, lr)[2])
        grad[i] = (values[0] - values[1]) / (2 * eps)
    return grad[:6].reshape(3, 2), grad[6:].reshape(1, 3)


def first_order_meta_gradient(batches, steps, lr):
    """w_init * dL(w_T)/dw_T, averaged over the meta batches: the inner gradients taken as constants."""
    w1, w2, _ = unrolled(torch.ones(3, 2), torch.ones(1, 3), batches, steps, lr)
    meta = [hand_gradients(w1, w2, b) for b in batches[steps:]]
    g1 = sum(g[0] for g in meta) / len(meta)
    g2 = sum(g[1] for g in meta) / len(meta)
    return W1.double() * g1, W2.double() * g2


def assert_scores(scores, expected1, expected2):
    expected = torch.cat([expected1.abs().flatten(), expected2.abs().flatten()]).float()
    got = torch.cat([scores["fc1.weight"].flatten(), scores["fc2.weight"].flatten()])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_an_independent_unrolled_computation(steps, first_order):
    batches = BATCHES[: steps + 1]  # steps 0..T-1 on batches 0..T-1, the meta-loss on batch T
    if first_order:
        expected = first_order_meta_gradient(batches, steps, LR)
    else:
        expected = finite_difference_meta_gradient(batches, steps, LR)
    scores = compute_scores(
        TwoLayerLinear(W1, W2), "prospr", dataloader=BATCHES, inner_steps=steps, inner_lr=LR, first_order=first_order
    )
    assert_scores(scores, *expected)
    # Second and first order differ here, and both from SNIP (otherwise the test could not tell them apart).
    second = torch.cat([g.flatten() for g in finite_difference_meta_gradient(batches, steps, LR)])
    first = torch.cat([g.flatten() for g in first_order_meta_gradient(batches, steps, LR)])
    snip = torch.cat([g.flatten() for g in first_order_meta_gradient(batches[steps:], 0, LR)])
    assert not torch.allclose(second, first, rtol=1e-2) and not torch.allclose(first, snip, rtol=1e-2)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_loss_averages_num_batches_and_short_dataloaders_cycle(first_order):
    # Two batches for 2 inner steps and 2 meta batches: the steps use batches 0, 1 and the meta-loss 0, 1 again.
    batches = [BATCHES[0], BATCHES[1], BATCHES[0], BATCHES[1]]
    expected = (first_order_meta_gradient if first_order else finite_difference_meta_gradient)(batches, 2, LR)
    criterion = ProsPrCriterion(inner_steps=2, inner_lr=LR, first_order=first_order)
    scores = compute_scores(TwoLayerLinear(W1, W2), criterion, dataloader=BATCHES[:2], num_batches=2)
    assert_scores(scores, *expected)
    assert criterion.batches_used(2) == 2  # what the dataloader really had


def test_tiny_inner_lr_gives_snip():
    # dL/dc = w * dL/dw at c = 1: with (almost) no training, ProsPr is SNIP on the meta batch.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    data = [(torch.randn(5, 6), torch.randint(0, 3, (5,))) for _ in range(4)]
    snip = compute_scores(model, "snip", dataloader=data[3:])
    for first_order in (False, True):
        prospr = compute_scores(model, "prospr", dataloader=data, inner_lr=1e-9, first_order=first_order)
        for n in snip:
            torch.testing.assert_close(prospr[n], snip[n], rtol=1e-4, atol=1e-7)


def test_tied_weights_are_one_masked_tensor():
    # GPT-2 ties the LM head to the token embedding: the mask of the shared tensor acts on both of its uses.
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=60,
        n_positions=16,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 60, (2, 2, 8))]
    prospr = compute_scores(model, "prospr", dataloader=data, include=["lm_head.weight"], inner_steps=1, inner_lr=1e-9)
    snip = compute_scores(model, "snip", dataloader=data[1:], include=["lm_head.weight"])
    assert "transformer.wte.weight" in prospr
    for n in snip:
        torch.testing.assert_close(prospr[n], snip[n], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("inner_steps", 0),
        ("inner_steps", -1),
        ("inner_steps", 1.5),
        ("inner_steps", True),
        ("inner_lr", 0.0),
        ("inner_lr", -0.1),
        ("inner_lr", float("inf")),
        ("inner_lr", float("nan")),
        ("inner_lr", "0.1"),
        ("first_order", "yes"),
        ("batch_statistics", 1),
        ("progress", "always"),
    ],
)
def test_bad_options_are_errors_naming_the_option(option, value):
    with pytest.raises(ValueError, match=option) as info:
        get_criterion("prospr", **{option: value})
    assert repr(value) in str(info.value)
    with pytest.raises(ValueError, match=option):
        compute_scores(TwoLayerLinear(W1, W2), "prospr", dataloader=BATCHES, **{option: value})


def test_without_data_is_a_clear_error():
    with pytest.raises(ValueError, match="prospr.*dataloader"):
        compute_scores(TwoLayerLinear(W1, W2), "prospr")
    with pytest.raises(ValueError, match="num_batches"):
        compute_scores(TwoLayerLinear(W1, W2), "prospr", dataloader=BATCHES, num_batches=0)


class LinearBNLinear(nn.Module):
    """``fc2(bn(fc1 x))`` without biases (batch norm with its own scale and shift); MSE loss against ``labels``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 3, bias=False)
        self.bn = nn.BatchNorm1d(3)
        self.fc2 = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(W1)
            self.fc2.weight.copy_(W2)
            self.bn.weight.copy_(torch.tensor([1.5, 0.5, -1.0]))
            self.bn.bias.copy_(torch.tensor([0.1, -0.3, 0.2]))

    def forward(self, pixel_values, labels=None):
        out = self.fc2(self.bn(self.fc1(pixel_values)))
        loss = nn.functional.mse_loss(out.squeeze(-1), labels) if labels is not None else None
        return {"loss": loss, "logits": out}


def batch_norm_meta_gradient(batches, steps, lr, train_mode):
    """dL/dc of LinearBNLinear by autograd through a hand-unrolled SGD trajectory written with ``F.batch_norm``
    (batch statistics when ``train_mode``, else the initial running statistics, mean 0 and variance 1); every
    floating parameter (the batch norm's scale and shift too) takes the inner steps, as ProsPr's docstring states."""
    model = LinearBNLinear()
    c1 = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    c2 = torch.ones(1, 3, dtype=torch.float64, requires_grad=True)
    scale, shift = (model.bn.weight.detach().double().requires_grad_(), model.bn.bias.detach().double().requires_grad_())
    weights = [W1.double() * c1, scale, shift, W2.double() * c2]
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)

    def loss(ws, batch):
        x, y = batch["pixel_values"].double(), batch["labels"].double()
        h = nn.functional.batch_norm(
            x @ ws[0].T, None if train_mode else mean, None if train_mode else var, ws[1], ws[2], training=train_mode
        )
        return ((h @ ws[3].T)[:, 0] - y).pow(2).mean()

    for batch in batches[:steps]:
        grads = torch.autograd.grad(loss(weights, batch), weights, create_graph=True)
        weights = [w - lr * g for w, g in zip(weights, grads, strict=True)]
    meta = sum(loss(weights, b) for b in batches[steps:]) / len(batches[steps:])
    return torch.autograd.grad(meta, [c1, c2])


@pytest.mark.parametrize("batch_statistics", [True, False])
def test_batch_norm_uses_batch_statistics_as_the_official_code(batch_statistics):
    expected = batch_norm_meta_gradient(BATCHES[:3], 2, LR, train_mode=batch_statistics)
    model = LinearBNLinear()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scores = compute_scores(
        model, "prospr", dataloader=BATCHES, inner_steps=2, inner_lr=LR, batch_statistics=batch_statistics
    )
    assert_scores(scores, *expected)
    # The running statistics the train-mode passes update are put back.
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    other = batch_norm_meta_gradient(BATCHES[:3], 2, LR, train_mode=not batch_statistics)
    assert not torch.allclose(torch.cat([g.flatten() for g in expected]), torch.cat([g.flatten() for g in other]))


def test_deep_residual_network_scores_finite_only_on_batch_statistics():
    # timm's ResNet-50 at initialization normalizes nothing on its running statistics (mean 0, variance 1): the
    # activations grow through the residual stages and three SGD steps at the official inner_lr=0.1 diverge.
    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False, num_classes=10)
    data = [{"pixel_values": torch.randn(8, 3, 32, 32), "labels": torch.randint(0, 10, (8,))} for _ in range(4)]
    scores = compute_scores(model, "prospr", dataloader=data, first_order=True)
    assert finite(scores) and all(s.sum() > 0 for s in scores.values())
    with pytest.raises(ValueError, match="NaN"):
        compute_scores(model, "prospr", dataloader=data, first_order=True, batch_statistics=False)


def make_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    examples = [
        {"pixel_values": torch.randn(1, 6, 6, generator=generator), "labels": torch.tensor(i % 3)} for i in range(12)
    ]
    return DataLoader(examples, batch_size=2, shuffle=True)  # shuffling draws from torch's global RNG


@pytest.mark.parametrize("first_order", [False, True])
def test_scoring_has_no_side_effects(first_order):
    model = mixed_state_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}

    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    scores = compute_scores(model, "prospr", dataloader=make_loader(), num_batches=2, first_order=first_order)
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
        assert (p.grad is None) if grads[n] is None else torch.equal(p.grad, grads[n]), n
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert list(scores) == ["conv.weight", "fc.weight", "head.weight"]
    for n, s in scores.items():
        assert s.shape == dict(model.named_parameters())[n].shape and s.dtype == torch.float32
        assert torch.isfinite(s).all() and s.sum() > 0, n  # the frozen fc.weight is scored too
        assert not s.requires_grad


def test_prune_at_init_keeps_exactly_the_count_and_records_the_batches():
    model = mixed_state_model()
    total = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1)
    masks = prune_at_init(model, "prospr", 0.9, dataloader=make_loader(), num_batches=2)
    assert masks.num_kept == num_to_keep(total, 0.9)
    assert masks.metadata["criterion"] == "prospr" and masks.metadata["num_batches"] == 3 + 2
    tiny = [{"pixel_values": torch.randn(2, 1, 6, 6), "labels": torch.tensor([0, 2])}]
    masks = prune_at_init(mixed_state_model(), "prospr", 0.5, dataloader=tiny)
    assert masks.num_kept == num_to_keep(total, 0.5) and masks.metadata["num_batches"] == 1


def finite(scores):
    return bool(scores) and all(torch.isfinite(s).all() for s in scores.values())


def test_timm_model_with_dict_batches():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    data = [{"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.randint(0, 10, (2,))} for _ in range(4)]
    scores = compute_scores(model, "prospr", dataloader=data)
    assert finite(scores) and set(scores) == set(get_prunable_parameters(model))
    assert all(s.sum() > 0 for s in scores.values())


def test_transformers_model_with_dict_batches():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = BertForSequenceClassification(config)
    ids = torch.randint(0, 100, (4, 2, 8))
    data = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": torch.tensor([0, 2])} for i in ids]
    for first_order in (False, True):
        scores = compute_scores(model, "prospr", dataloader=data, first_order=first_order)
        assert finite(scores) and "classifier.weight" in scores


def test_tuple_batches_from_a_tensor_dataset():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    loader = DataLoader(TensorDataset(torch.randn(16, 6), torch.randint(0, 3, (16,))), batch_size=4)
    scores = compute_scores(model, "prospr", dataloader=loader)
    assert finite(scores) and list(scores) == ["0.weight", "2.weight"]


def test_half_precision_model_scores_like_its_float32_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).half()
    data = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(4)]
    scores = compute_scores(model, "prospr", dataloader=data)
    assert finite(scores) and all(s.dtype == torch.float32 for s in scores.values())
    assert all(p.dtype == torch.float16 for p in model.parameters())
    reference = compute_scores(model.float(), "prospr", dataloader=data)
    for n in scores:
        torch.testing.assert_close(scores[n], reference[n])


def test_progress_option_shows_the_bar(capsys, caplog):
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        capsys.readouterr()
        with caplog.at_level(logging.INFO, logger="autosparse_hf.criteria.prospr"):
            compute_scores(TwoLayerLinear(W1, W2), "prospr", dataloader=BATCHES, progress=True)
        assert "ProsPr passes" in capsys.readouterr().err
        assert "prospr: 3 inner steps" in caplog.text
        compute_scores(TwoLayerLinear(W1, W2), "prospr", dataloader=BATCHES, progress=False)
        assert "ProsPr passes" not in capsys.readouterr().err
    finally:
        if not was:
            hf_logging.disable_progress_bar()


def unrolled_meta_gradient(model, batches, steps, lr, num_meta):
    """|dL/dc| by keeping the whole unrolled trajectory as one graph (every inner step's double-backward graph and
    its weights at once), the mask c multiplying the prunable weights: what the reverse sweep must reproduce."""
    from contextlib import ExitStack

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from autosparse_hf import get_family
    from autosparse_hf.criteria.grasp import twice_differentiable_activations
    from autosparse_hf.gradients import loss_with

    family = get_family(model)
    names = list(get_prunable_parameters(model))
    model.eval()
    masks = {n: torch.ones_like(p, requires_grad=True) for n, p in model.named_parameters() if n in names}
    fast = {n: p.detach() * masks[n] if n in masks else p.detach().requires_grad_(True)
            for n, p in model.named_parameters() if p.is_floating_point()}
    meta = {n: torch.zeros_like(m) for n, m in masks.items()}
    with ExitStack() as stack:
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        stack.enter_context(twice_differentiable_activations())
        for t in range(steps):
            grads = torch.autograd.grad(loss_with(model, family, batches[t], fast), list(fast.values()),
                                        create_graph=True, allow_unused=True)
            fast = {n: w if g is None else w - lr * g for (n, w), g in zip(fast.items(), grads, strict=True)}
        for k, batch in enumerate(batches[steps:steps + num_meta]):
            grads = torch.autograd.grad(loss_with(model, family, batch, fast) / num_meta, list(masks.values()),
                                        retain_graph=k < num_meta - 1)
            for n, g in zip(masks, grads, strict=True):
                meta[n] += g
    return {n: g.abs() for n, g in meta.items()}


@pytest.mark.parametrize(("steps", "num_meta"), [(1, 1), (3, 1), (2, 2)])
def test_reverse_sweep_equals_the_unrolled_graph(steps, num_meta):
    # The criterion differentiates the trajectory one step at a time (v <- v - lr H_t v on recomputed weights),
    # holding one step's graph; backpropagating through the whole unrolled graph gives the same meta-gradient, up to
    # the order in which float32 sums are taken. A GPT-2: attention, layer norms, a tied embedding that trains too.
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=40, n_positions=16))
    g = torch.Generator().manual_seed(2)
    batches = []
    for _ in range(steps + num_meta):
        ids = torch.randint(0, 40, (2, 10), generator=g)
        batches.append({"input_ids": ids, "labels": ids.clone()})
    expected = unrolled_meta_gradient(model, batches, steps, 0.1, num_meta)
    scores = compute_scores(model, "prospr", dataloader=batches, num_batches=num_meta, inner_steps=steps,
                            inner_lr=0.1, progress=False)
    for n, value in expected.items():
        torch.testing.assert_close(scores[n], value, rtol=1e-5, atol=1e-6 * float(value.max()))


def test_one_value_per_batch_norm_channel_is_a_clear_error():
    # A batch of one reaching a 1x1 feature map: batch statistics are undefined; the error names ProsPr's option.
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 3))

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, pixel_values, labels=None):
            logits = self.net(pixel_values)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    data = [{"pixel_values": torch.randn(1, 1, 3, 3), "labels": torch.tensor([1])}]
    with pytest.raises(ValueError, match="batch_statistics"):
        compute_scores(Wrapped(), "prospr", dataloader=data)
    assert finite(compute_scores(Wrapped(), "prospr", dataloader=data, batch_statistics=False))
