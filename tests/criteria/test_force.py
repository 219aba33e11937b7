"""Iterative SNIP and FORCE (``autosparse_hf.criteria.force``) against an independent implementation.

The reference below follows the paper's algorithm (de Jorge et al. 2021, arXiv 2006.09081) with plain tensors: the
gradient of the loss at ``w0 * m`` by hand-written backpropagation (no autograd), a full sort per step, ties to the
larger ``|w0|``. The library's masks must be the reference's, step for step.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import autosparse_hf as A
from autosparse_hf.criteria.force import FORCECriterion, IterSNIPCriterion
from autosparse_hf.masks import num_to_keep


class TanhMLP(nn.Module):
    """``logits = W2 tanh(W1 x)``, bias-free, cross-entropy loss: small enough to differentiate by hand."""

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor) -> None:
        super().__init__()
        self.fc1 = nn.Linear(w1.shape[1], w1.shape[0], bias=False)
        self.fc2 = nn.Linear(w2.shape[1], w2.shape[0], bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(w1)
            self.fc2.weight.copy_(w2)

    def forward(self, pixel_values, labels=None):
        logits = self.fc2(torch.tanh(self.fc1(pixel_values)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def hand_gradients(w1, w2, batch):
    """dL/dW1, dL/dW2 of the mean cross-entropy of ``W2 tanh(W1 x)``, by the chain rule written out."""
    x, y = batch["pixel_values"].double(), batch["labels"]
    n = x.shape[0]
    pre = x @ w1.T
    hidden = torch.tanh(pre)
    logits = hidden @ w2.T
    probs = torch.softmax(logits, dim=1)
    dlogits = (probs - nn.functional.one_hot(y, w2.shape[0]).double()) / n
    grad_w2 = dlogits.T @ hidden
    dpre = (dlogits @ w2) * (1 - hidden**2)
    grad_w1 = dpre.T @ x
    return grad_w1, grad_w2


def reference_masks(w1, w2, batches, target_density, steps, revive, schedule="exp"):
    """The progressive procedure with hand gradients and sorting: the mask after every step."""
    w0 = [w1.double(), w2.double()]
    mask = [torch.ones_like(w) for w in w0]
    total = sum(w.numel() for w in w0)
    history = []
    for k in range(1, steps + 1):
        masked = [w * m for w, m in zip(w0, mask, strict=True)]
        grads = [torch.zeros_like(w) for w in w0]
        for batch in batches:
            for acc, g in zip(grads, hand_gradients(*masked, batch), strict=True):
                acc += g / len(batches)
        saliency = torch.cat([(w * g).abs().reshape(-1) for w, g in zip(w0, grads, strict=True)])
        eligible = torch.ones_like(saliency, dtype=torch.bool) if revive else torch.cat([m.reshape(-1) for m in mask]).bool()
        density = target_density ** (k / steps) if schedule == "exp" else 1 - k * (1 - target_density) / steps
        count = num_to_keep(total, 1 - (density if k < steps else target_density))
        count = min(count, int(eligible.sum()))
        magnitude = torch.cat([w.abs().reshape(-1) for w in w0])
        key = torch.where(eligible, saliency, torch.tensor(-1.0, dtype=saliency.dtype))
        # Descending by saliency, then by |w0| (both keys exact in float64 at these sizes).
        order = sorted(range(key.numel()), key=lambda i: (-float(key[i]), -float(magnitude[i]), i))
        keep = torch.zeros_like(key, dtype=torch.bool)
        keep[order[:count]] = True
        mask = [piece.reshape(w.shape).double() for piece, w in zip(torch.split(keep, [w.numel() for w in w0]), w0, strict=True)]
        history.append([m.bool() for m in mask])
    return history


def problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(12, 6, generator=g) * 0.7
    w2 = torch.randn(4, 12, generator=g) * 0.5
    batches = [
        {"pixel_values": torch.randn(10, 6, generator=g), "labels": torch.randint(0, 4, (10,), generator=g)}
        for _ in range(2)
    ]
    return w1, w2, batches


def final_mask(scores, sparsity):
    return A.select_masks(scores, sparsity)


@pytest.mark.parametrize("name", ["iter_snip", "force"])
@pytest.mark.parametrize(("steps", "schedule"), [(1, "exp"), (4, "exp"), (3, "linear")])
def test_the_mask_is_the_papers_procedure_step_for_step(name, steps, schedule):
    w1, w2, batches = problem()
    sparsity = 0.85
    model = TanhMLP(w1, w2)
    scores = A.compute_scores(model, name, dataloader=batches, num_batches=2, sparsity=sparsity, steps=steps,
                              schedule=schedule)
    expected = reference_masks(w1, w2, batches, 1 - sparsity, steps, revive=name == "force", schedule=schedule)[-1]
    masks = final_mask(scores, sparsity)
    assert torch.equal(masks["fc1.weight"], expected[0])
    assert torch.equal(masks["fc2.weight"], expected[1])
    assert masks.num_kept == num_to_keep(w1.numel() + w2.numel(), sparsity)


def test_one_step_is_snip():
    w1, w2, batches = problem(1)
    model = TanhMLP(w1, w2)
    snip = final_mask(A.compute_scores(model, "snip", dataloader=batches, num_batches=2), 0.9)
    for name in ("iter_snip", "force"):
        one = final_mask(A.compute_scores(model, name, dataloader=batches, num_batches=2, sparsity=0.9, steps=1), 0.9)
        assert all(torch.equal(one[n], snip[n]) for n in snip), name


def test_force_revives_weights_and_iter_snip_never_does():
    w1, w2, batches = problem()
    steps, density = 6, 0.05
    force = reference_masks(w1, w2, batches, density, steps, revive=True)
    snip = reference_masks(w1, w2, batches, density, steps, revive=False)
    # The reference itself shows the difference the criteria are about: some weight FORCE pruned came back...
    revived = any(bool((later & ~earlier).any()) for before, after in zip(force, force[1:], strict=False)
                  for earlier, later in zip(before, after, strict=True))
    assert revived
    # ...and Iter SNIP's masks only shrink.
    for before, after in zip(snip, snip[1:], strict=False):
        assert all(not bool((later & ~earlier).any()) for earlier, later in zip(before, after, strict=True))
    model = TanhMLP(w1, w2)
    for name, expected in (("force", force[-1]), ("iter_snip", snip[-1])):
        scores = A.compute_scores(model, name, dataloader=batches, num_batches=2, sparsity=1 - density, steps=steps)
        masks = final_mask(scores, 1 - density)
        assert torch.equal(masks["fc1.weight"], expected[0]) and torch.equal(masks["fc2.weight"], expected[1]), name


@pytest.mark.parametrize("name", ["iter_snip", "force"])
def test_per_tensor_budgets_are_kept_exactly(name):
    w1, w2, batches = problem(2)
    counts = {"fc1.weight": 9, "fc2.weight": 5}
    sparsity = 1 - 14 / (w1.numel() + w2.numel())
    model = TanhMLP(w1, w2)
    scores = A.compute_scores(model, name, dataloader=batches, sparsity=sparsity, budgets=counts, steps=5)
    masks = A.select_masks(scores, sparsity, scope="counts", layer_counts=counts)
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    # Fixed with the criterion, the counts are its default budgets, through prune_at_init too.
    pruned = A.prune_at_init(TanhMLP(w1, w2), name, sparsity, batches, criterion_options={"budgets": counts, "steps": 5})
    assert {n: int(m.sum()) for n, m in pruned.items()} == counts
    assert all(torch.equal(pruned[n], masks[n]) for n in counts)


@pytest.mark.parametrize("schedule", ["exp", "linear"])
def test_inside_budgets_each_tensor_follows_the_chosen_schedule(schedule):
    # Iter SNIP's scores tell when each weight left: one removed at step r scores in [r - 1, r - 0.5], a survivor
    # scores >= steps; so a tensor kept count(score >= k) weights after step k.
    w1, w2, batches = problem(2)
    counts, steps = {"fc1.weight": 9, "fc2.weight": 5}, 5
    sparsity = 1 - 14 / (w1.numel() + w2.numel())
    scores = A.compute_scores(
        TanhMLP(w1, w2), "iter_snip", dataloader=batches, sparsity=sparsity, budgets=counts, steps=steps,
        schedule=schedule,
    )
    for name, final in counts.items():
        n = scores[name].numel()
        kept = [int((scores[name] >= k).sum()) for k in range(1, steps + 1)]
        if schedule == "linear":
            expected = [round(n - k * (n - final) / steps) for k in range(1, steps)]
        else:
            expected = [round(n * (final / n) ** (k / steps)) for k in range(1, steps)]
        assert kept == [*expected, final], (name, schedule)


@pytest.mark.parametrize("name", ["iter_snip", "force"])
def test_weights_pruned_before_scoring_stay_pruned(name):
    w1, w2, batches = problem(3)
    existing = {"fc1.weight": torch.rand(w1.shape, generator=torch.Generator().manual_seed(0)) > 0.5,
                "fc2.weight": torch.ones(w2.shape, dtype=torch.bool)}
    model = TanhMLP(w1 * existing["fc1.weight"], w2)
    scores = A.compute_scores(model, name, dataloader=batches, sparsity=0.8, existing=existing, steps=3)
    assert bool((scores["fc1.weight"][~existing["fc1.weight"]] == -1).all())
    masks = final_mask(scores, 0.8)
    assert not bool((masks["fc1.weight"] & ~existing["fc1.weight"]).any())


def test_prune_at_init_keeps_the_exact_count_and_records_the_criterion():
    w1, w2, batches = problem(4)
    for name in ("iter_snip", "force"):
        masks = A.prune_at_init(TanhMLP(w1, w2), name, 0.95, batches, criterion_options={"steps": 10})
        assert masks.num_kept == num_to_keep(w1.numel() + w2.numel(), 0.95)
        assert masks.metadata["criterion"] == name


@pytest.mark.parametrize("cls", [IterSNIPCriterion, FORCECriterion])
def test_bad_options_name_the_option(cls):
    with pytest.raises(ValueError, match="steps"):
        cls(steps=0)
    with pytest.raises(ValueError, match="steps"):
        cls(steps=2.5)
    with pytest.raises(ValueError, match="schedule"):
        cls(schedule="cosine")
    with pytest.raises(ValueError, match="needs data"):
        A.compute_scores(TanhMLP(*problem()[:2]), cls.name)


def test_the_density_schedule_ends_at_the_target():
    crit = FORCECriterion(steps=5)
    assert math.isclose(crit.density(5, 0.01), 0.01) and crit.density(1, 0.01) > 0.01
    linear = FORCECriterion(steps=4, schedule="linear")
    assert [round(linear.density(k, 0.2), 6) for k in range(1, 5)] == [0.8, 0.6, 0.4, 0.2]


@pytest.mark.parametrize("schedule", ["exp", "linear"])
def test_iter_snip_scores_reproduce_every_steps_mask(schedule):
    # The encoding (a weight removed at step k scores k - 1 + 0.5 s / peak_k, a survivor steps + s / peak) puts the
    # survivors of every step above the weights it removed: the top count of step k is that step's mask.
    w1, w2, batches = problem(5)
    steps, density = 5, 0.1
    scores = A.compute_scores(TanhMLP(w1, w2), "iter_snip", dataloader=batches, num_batches=2, sparsity=1 - density,
                              steps=steps, schedule=schedule)
    history = reference_masks(w1, w2, batches, density, steps, revive=False, schedule=schedule)
    for k, expected in enumerate(history, start=1):
        kept = int(sum(int(m.sum()) for m in expected))
        masks = A.select_masks(scores, 1 - kept / (w1.numel() + w2.numel()))
        assert torch.equal(masks["fc1.weight"], expected[0]) and torch.equal(masks["fc2.weight"], expected[1]), k
        # Removed at step k: scores in [k - 1, k - 0.5]; survivors of the last step: >= steps.
    removed_at_1 = [s[~m] for s, m in zip((scores["fc1.weight"], scores["fc2.weight"]), history[0], strict=True)]
    assert all(bool(((r >= 0) & (r <= 0.5)).all()) for r in removed_at_1)


@pytest.mark.parametrize("name", ["iter_snip", "force"])
def test_scoring_never_writes_the_model(name):
    # The masked weights of each step are substituted (functional_call), never written into the parameters: no
    # in-place write (version counter) and no copy of the model is needed to restore it.
    w1, w2, batches = problem(6)
    model = TanhMLP(w1, w2)
    versions = {n: p._version for n, p in model.named_parameters()}
    A.compute_scores(model, name, dataloader=batches, sparsity=0.8, steps=3)
    assert {n: p._version for n, p in model.named_parameters()} == versions
    assert torch.equal(model.fc1.weight, w1) and torch.equal(model.fc2.weight, w2)


@pytest.mark.parametrize("seed", range(6))
def test_magnitude_tie_break_without_a_flat_magnitude_copy_is_top_counts(seed):
    # _top_count_by_magnitude reads |w0| only at the tied entries; it must keep what top_count with the full
    # tie_break keeps, whatever the ties (few distinct saliencies and magnitudes force them).
    from autosparse_hf.criteria.buffers import FlatLayout
    from autosparse_hf.criteria.force import _top_count_by_magnitude
    from autosparse_hf.masks.topk import top_count

    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 5), (7,), (2, 2, 3), (0, 4), (11,)]
    weights = {f"t{i}": (torch.randint(-3, 4, s, generator=g).float() * 0.5) for i, s in enumerate(shapes)}
    layout = FlatLayout(weights)
    values = torch.randint(0, 4, (layout.total,), generator=g).float()
    magnitude = torch.cat([w.abs().reshape(-1) for w in weights.values()])
    for count in [0, 1, 5, layout.total // 2, layout.total - 1, layout.total]:
        expected = top_count(values, count, tie_break=magnitude)
        assert torch.equal(_top_count_by_magnitude(values, count, layout), expected), count


@pytest.mark.parametrize("name", ["iter_snip", "force"])
def test_final_encoding_in_chunks_is_the_whole_tensor_encoding(name, monkeypatch):
    # The float64 scores are written chunk by chunk (bounded temporaries on large tensors); chunks that split every
    # tensor, one with pruned-before-scoring entries, must give the one-chunk scores bit for bit.
    import autosparse_hf.criteria.buffers as buffers

    w1, w2, batches = problem(5)
    existing = {"fc1.weight": torch.rand(w1.shape, generator=torch.Generator().manual_seed(1)) > 0.3,
                "fc2.weight": torch.ones(w2.shape, dtype=torch.bool)}  # fmt: skip
    model = TanhMLP(w1 * existing["fc1.weight"], w2)
    whole = A.compute_scores(model, name, dataloader=batches, sparsity=0.8, existing=existing, steps=4)
    monkeypatch.setattr(buffers, "FINISH_CHUNK", 5)
    assert buffers.chunks(12) == [slice(0, 5), slice(5, 10), slice(10, 12)]
    chunked = A.compute_scores(model, name, dataloader=batches, sparsity=0.8, existing=existing, steps=4)
    for n in whole:
        assert chunked[n].dtype == torch.float64 and chunked[n].shape == whole[n].shape
        assert torch.equal(chunked[n], whole[n]), n
    assert bool((whole["fc1.weight"][~existing["fc1.weight"]] == -1).all())


class TwoHeads(nn.Module):
    """A shared layer and two heads; a batch with ``head == 1`` never reaches ``head_b`` (an unused gradient)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.trunk = nn.Linear(5, 7, bias=False)
        self.head_a = nn.Linear(7, 3, bias=False)
        self.head_b = nn.Linear(7, 3, bias=False)
        with torch.no_grad():
            for layer in (self.trunk, self.head_a, self.head_b):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))

    def forward(self, pixel_values, labels=None, head=None):
        hidden = torch.tanh(self.trunk(pixel_values))
        logits = self.head_a(hidden) if int(head[0]) == 1 else self.head_a(hidden) + self.head_b(hidden)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


@pytest.mark.parametrize("name", ["iter_snip", "force"])
@pytest.mark.parametrize("last_reaches_head_b", [True, False])
def test_saliency_sums_the_batches_also_for_a_tensor_the_last_batch_does_not_reach(name, last_reaches_head_b):
    # Saliencies are written from each gradient as backward completes it (in a hook, on the last batch); a tensor
    # the last batch does not reach must still get the sum of the earlier batches' gradients, not zeros.
    model = TwoHeads(0)
    g = torch.Generator().manual_seed(1)
    heads = [0, 1] if not last_reaches_head_b else [1, 0]
    batches = [
        {"pixel_values": torch.randn(6, 5, generator=g), "labels": torch.randint(0, 3, (6,), generator=g),
         "head": torch.full((6,), h)}
        for h in heads
    ]  # fmt: skip
    scores = A.compute_scores(model, name, dataloader=batches, num_batches=2, sparsity=0.5, steps=1)
    # Reference: |w0 * (sum of the batches' gradients of loss / 2)|, by autograd on the model itself.
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for batch in batches:
        loss = model(**batch)["loss"] / 2
        names = [n for n, _ in model.named_parameters()]
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        for n, grad in zip(names, grads, strict=True):
            if grad is not None:
                total[n] += grad
    saliency = {n.removesuffix(".weight"): (p.detach() * total[n]).abs().double() for n, p in model.named_parameters()}
    peak = max(float(s.max()) for s in saliency.values())
    masks = final_mask(scores, 0.5)
    for n, s in scores.items():
        layer = n.removesuffix(".weight")
        # One step: a survivor scores 1 + s / peak (both criteria), the others s / peak scaled by 0.5.
        decoded = torch.where(masks[n], s - 1.0, s / 0.5) if name == "force" else torch.where(masks[n], s - 1.0, 2.0 * s)
        torch.testing.assert_close(decoded, saliency[layer] / peak, rtol=1e-5, atol=1e-7)
    assert float(saliency["head_b"].max()) > 0  # head_b's gradient comes from one batch only
