"""Ties decided by something meaningful: a second score (|w0| in prune_at_init), then position; zero-initialized
normalization scales do not leave whole residual blocks tied at zero."""

from __future__ import annotations

import copy
import logging
import math
import random

import pytest
import torch

import autosparse_hf as A
from autosparse_hf import select_masks
from autosparse_hf.state import zero_initialized_norm_scales


def _reference(scores, sparsity, tie_break):
    """A stable sort on (score, tie_break) descending, then position: what select_masks must keep."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).double() for n in names])
    second = torch.cat([tie_break[n].reshape(-1).double() for n in names])
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), -float(second[i]), i))
    k = round((1 - sparsity) * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    out, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[offset : offset + size].reshape(scores[n].shape)
        offset += size
    return out


@pytest.mark.parametrize("seed", range(20))
def test_global_selection_breaks_ties_by_the_second_score(seed):
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.randint(0, 3, (s,), generator=g).float() for n, s in (("a", 40), ("b", 25), ("c", 60))}
    second = {n: torch.randint(0, 5, s.shape, generator=g).float() for n, s in scores.items()}
    for sparsity in (0.1, 0.5, 0.8, 0.95):
        masks = select_masks(scores, sparsity, tie_break=second)
        expected = _reference(scores, sparsity, second)
        assert all(torch.equal(masks[n], expected[n]) for n in scores), (seed, sparsity)


def test_prune_at_init_lets_the_initial_magnitude_decide_ties():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))

    class Constant(A.Criterion):
        name = "test-constant"

        def score(self, context):
            return {n: torch.ones_like(p.param) for n, p in context.params.items()}

    masks = A.prune_at_init(model, Constant(), 0.75)
    magnitudes = torch.cat([p.detach().abs().reshape(-1) for n, p in model.named_parameters() if n.endswith("weight")])
    kept = torch.cat([masks[n].reshape(-1) for n in masks])
    assert magnitudes[kept].min() >= magnitudes[~kept].max()  # not the first tensor kept whole by position


def test_many_tied_scores_at_the_threshold_are_reported(caplog):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))

    class Constant(A.Criterion):
        name = "test-constant-2"

        def score(self, context):
            return {n: torch.ones_like(p.param) for n, p in context.params.items()}

    with caplog.at_level(logging.WARNING, logger="autosparse_hf"):
        A.prune_at_init(model, Constant(), 0.5)
    assert any("equal the threshold score" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("criterion", ["snip", "grasp", "synflow"])
def test_timm_zero_initialized_blocks_are_scored_not_tied(criterion, monkeypatch):
    if criterion == "synflow":
        # Scored at sparsity 0 nothing is pruned between rounds, so every round repeats the first: 2 rounds give the
        # scores of the default 100 (up to the constant round offset), at a fiftieth of the cost.
        from autosparse_hf.criteria.synflow import SynFlowCriterion

        criterion = SynFlowCriterion(rounds=2, progress=False)
    net = A.TimmForImageClassification.from_name("resnet10t", num_classes=10, in_chans=1)
    assert zero_initialized_norm_scales(net), "timm's zero_init_last zeroes the last BatchNorm scale of each block"
    g = torch.Generator().manual_seed(0)
    batch = [{"pixel_values": torch.randn(8, 1, 64, 64, generator=g), "labels": torch.randint(0, 10, (8,), generator=g)}]
    branch = ["model.layer1.0.conv1.weight", "model.layer1.0.conv2.weight", "model.layer2.0.conv2.weight"]

    def distinct_share(scores, name):
        s = scores[name]
        return float((s != s.min()).float().mean())

    scores = A.compute_scores(net, criterion, dataloader=batch)
    assert all(not bool(s.any()) for s in zero_initialized_norm_scales(net))  # the model is left as found
    # Without the treatment, the residual branches' convolutions all score the same (0): the tie order would decide.
    import contextlib

    import autosparse_hf.criteria.base as base

    monkeypatch.setattr(base, "revived_zero_norm_scales", lambda model: contextlib.nullcontext(0))
    untreated = A.compute_scores(net, criterion, dataloader=batch)
    for name in branch:
        assert distinct_share(untreated, name) == 0.0, name
        assert distinct_share(scores, name) > 0.5, name
    monkeypatch.undo()
    if isinstance(criterion, str):  # SynFlow may genuinely rank a shortcut lowest (then the collapse warning says so)
        masks = A.prune_at_init(copy.deepcopy(net), criterion, 0.9, batch)
        assert min(masks.layer_density().values()) > 0.0


class ZeroHeadMLP(torch.nn.Module):
    """A body and a zero-initialized classifier head, as timm's MLP-Mixer builds it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(8, 16)
        self.head = torch.nn.Linear(16, 3)
        torch.nn.init.zeros_(self.head.weight)

    def forward(self, pixel_values, labels=None):
        logits = self.head(torch.relu(self.body(pixel_values)))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


@pytest.mark.parametrize("criterion", ["snip", "grasp", "force", "synflow"])
def test_a_zero_initialized_head_is_scored_as_default_initialized(criterion, caplog):
    model = ZeroHeadMLP()
    batch = [{"pixel_values": torch.randn(6, 8), "labels": torch.tensor([0, 1, 2, 0, 1, 2])}]
    with caplog.at_level(logging.INFO, logger="autosparse_hf"):
        scores = A.compute_scores(model, criterion, dataloader=batch, sparsity=0.9, **(
            {"steps": 3} if criterion == "force" else {"rounds": 3} if criterion == "synflow" else {}))
    # Without the treatment every score is exactly 0 (nothing upstream of a zero head has a gradient).
    assert bool((scores["body.weight"] > 0).any()) and bool((scores["head.weight"] > 0).any())
    assert "['head.weight'] default-initialized" in caplog.text
    assert not bool(model.head.weight.any())  # the model is left as it was
    masks = A.prune_at_init(ZeroHeadMLP(), criterion, 0.9, batch,
                            criterion_options={"steps": 3} if criterion == "force" else {})
    assert masks["head.weight"].any() and masks["body.weight"].any()


def test_a_tensor_zero_because_it_is_pruned_is_not_revived():
    model = ZeroHeadMLP()
    torch.nn.init.normal_(model.head.weight)
    existing = {"body.weight": torch.ones(16, 8, dtype=torch.bool), "head.weight": torch.zeros(3, 16, dtype=torch.bool)}
    with torch.no_grad():
        model.head.weight.zero_()
    batch = [{"pixel_values": torch.randn(6, 8), "labels": torch.tensor([0, 1, 2, 0, 1, 2])}]
    scores = A.compute_scores(model, "snip", dataloader=batch, existing=existing)
    assert not bool(scores["head.weight"].any()) and not bool(scores["body.weight"].any())


def _reference_among(scores, sparsity, second, existing):
    """Sort-based: the best of the surviving weights by (score, second score, position), in float64."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).double() for n in names])
    extra = torch.cat([second[n].reshape(-1).double() for n in names])
    alive = torch.cat([existing[n].reshape(-1) for n in names])
    order = sorted((i for i in range(flat.numel()) if alive[i]), key=lambda i: (-float(flat[i]), -float(extra[i]), i))
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[: round((1 - sparsity) * flat.numel())]] = True
    pieces = torch.split(keep, [s.numel() for s in scores.values()])
    return {n: piece.reshape(scores[n].shape) for n, piece in zip(names, pieces, strict=True)}


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("break_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_ties_among_survivors_follow_the_second_score_in_any_dtype(seed, break_dtype):
    # Existing masks take the candidates path (non-candidates set to -inf); the tie-breaks are compared in float32
    # unless one is float64, which is exact for every half-precision value.
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.randint(0, 3, (s,), generator=g).float() for n, s in (("a", 40), ("b", 25), ("c", 60))}
    second = {n: (torch.randn(s.shape, generator=g) * 3).round().to(break_dtype) for n, s in scores.items()}
    existing = {n: torch.rand(s.shape, generator=g) < 0.7 for n, s in scores.items()}
    alive = sum(int(m.sum()) for m in existing.values()) / 125
    for sparsity in (1 - alive, 1 - 0.8 * alive, 1 - 0.3 * alive, 0.99):
        masks = select_masks(scores, sparsity, tie_break=second, existing=existing)
        expected = _reference_among(scores, sparsity, second, existing)
        assert all(torch.equal(masks[n], expected[n]) for n in scores), (seed, sparsity)


def test_a_needed_candidate_at_minus_infinity_is_still_kept():
    # The candidates path sets non-candidates to -inf; a candidate that itself scores -inf and is needed falls back
    # to gathering the candidates (select_masks refuses such scores; the helper does not rely on that).
    from autosparse_hf.masks.topk import _top_count_among

    values = torch.tensor([3.0, -math.inf, 1.0, 5.0, -math.inf, 2.0])
    candidates = torch.tensor([False, True, True, False, True, False])
    keep = _top_count_among(values, candidates, 2)
    assert keep.tolist() == [False, True, True, False, False, False]  # 1.0, then the first -inf
    assert _top_count_among(values, candidates, 1).tolist() == [False, False, True, False, False, False]


@pytest.mark.parametrize("seed", range(30))
def test_global_selection_without_concatenating_is_the_sort_based_one(seed, monkeypatch):
    # Small inputs take the concatenating path; a tiny bracket threshold and sample force the per-tensor one (and
    # its fallbacks, when the sample's bracket misses) on the shapes and tie patterns a test can sort.
    from autosparse_hf.masks import topk

    picker = random.Random(seed)
    monkeypatch.setattr(topk, "_BRACKET_MIN_SIZE", picker.choice([1, 64]))
    monkeypatch.setattr(topk, "_BRACKET_SAMPLE", picker.choice([4, 16, 64]))
    monkeypatch.setattr(topk, "_BRACKET_SIGMAS", picker.choice([0.0, 1.0, 6.0]))
    g = torch.Generator().manual_seed(seed)
    sizes = [picker.randint(0, 90) for _ in range(picker.randint(2, 5))]
    levels = picker.choice([3, 20, 1000])  # few distinct scores: many ties at the threshold
    scores = {f"t{i}": (torch.randint(0, levels, (n,), generator=g).float() - levels / 3) for i, n in enumerate(sizes)}
    if not sum(sizes):
        return
    existing = {n: torch.rand(s.shape, generator=g) < picker.choice([0.3, 0.9, 1.0]) for n, s in scores.items()}
    if picker.random() < 0.3:
        existing = {n: torch.ones_like(m) for n, m in existing.items()}
    second = {n: torch.randint(0, 4, s.shape, generator=g).float() for n, s in scores.items()}
    alive = sum(int(m.sum()) for m in existing.values()) / sum(sizes)
    for sparsity in (1 - alive, 1 - 0.9 * alive, 1 - 0.5 * alive, 1 - 0.05 * alive, 0.999):
        for breaks in (None, second):
            masks = select_masks(scores, sparsity, tie_break=breaks, existing=existing)
            zeros = {n: torch.zeros_like(s) for n, s in scores.items()}
            expected = _reference_among(scores, sparsity, breaks if breaks is not None else zeros, existing)
            assert all(torch.equal(masks[n], expected[n]) for n in scores), (seed, sparsity, breaks is None)


@pytest.mark.parametrize("seed", range(8))
def test_a_tie_break_function_keeps_what_the_tie_break_tensor_keeps(seed):
    # top_count(values, c, tie_break=f) reads the second score only at the tied positions (FORCE / Iter SNIP pass
    # |w0| this way, with no flat copy of it); large inputs take the bracketed threshold, few distinct values force
    # ties at it, and the function must be asked for the tied positions only.
    from autosparse_hf.masks.topk import top_count

    g = torch.Generator().manual_seed(seed)
    n = [37, 5000, 70_000, 200_003][seed % 4]
    values = torch.randint(0, [3, 50, 1000, 7][seed % 4], (n,), generator=g).to(torch.float32)
    second = torch.randint(0, 4, (n,), generator=g).to(torch.float64)
    asked: list[torch.Tensor] = []

    def at(positions):
        asked.append(positions)
        return second[positions]

    for count in [1, n // 3, n // 2 + 1, n - 1]:
        asked.clear()
        expected = top_count(values, count, tie_break=second)
        assert torch.equal(top_count(values, count, tie_break=at), expected), (n, count)
        kept = expected.nonzero().squeeze(1)
        threshold = values[kept].min()
        for positions in asked:
            assert bool((values[positions] == threshold).all())
            assert bool((positions[1:] > positions[:-1]).all())


@pytest.mark.parametrize("kind", ["tensor", "function"])
def test_selection_moved_to_the_cpu_keeps_the_tie_break(monkeypatch, kind):
    # Scores on a device selection does not run on (e.g. MPS) are selected on the CPU; the tie-break goes with them
    # (a function is still asked with positions on the scores' device). Simulated by taking the CPU off the list:
    # the same answer as the direct path, and not the index order.
    from autosparse_hf.masks import topk

    values = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0, 3.0])
    second = torch.tensor([0.0, 1.0, 5.0, 2.0, 9.0, 7.0])
    expected = topk.top_count(values, 2, tie_break=second)
    assert expected.nonzero().squeeze(1).tolist() == [2, 5]
    devices = []

    def at(positions):
        devices.append(positions.device)
        return second[positions]

    monkeypatch.setattr(topk, "_SELECTION_DEVICE_TYPES", ("cuda",))
    got = topk.top_count(values, 2, tie_break=second if kind == "tensor" else at)
    assert torch.equal(got, expected)
    assert kind == "tensor" or devices == [values.device]


def test_a_tie_break_function_of_the_wrong_length_is_an_error():
    from autosparse_hf.masks.topk import top_count

    with pytest.raises(ValueError, match="tie_break gave"):
        top_count(torch.tensor([1.0, 1.0, 1.0, 0.0]), 2, tie_break=lambda positions: torch.zeros(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.int32, torch.float16])
def test_masked_values_is_masked_select(dtype):
    from autosparse_hf.masks.topk import masked_values

    g = torch.Generator().manual_seed(0)
    base = (torch.randn(3000, generator=g) * 100).to(dtype)
    for values in (base, base[::3], base[5:2005]):  # contiguous, strided, offset views
        mask = torch.rand(values.shape, generator=g) > 0.9
        out = masked_values(values, mask)
        assert out.dtype == dtype and torch.equal(out, torch.masked_select(values, mask))


@pytest.mark.parametrize("seed", range(6))
def test_tie_break_functions_across_tensors_keep_what_tie_break_tensors_keep(seed):
    # Iter SNIP selects across tensors with the eligible weights as candidates and |w0| read at the tied positions of
    # each tensor only (a function per tensor); the answer must be the tie-break tensors' (and the concatenation's).
    from autosparse_hf.masks.topk import top_count_across

    g = torch.Generator().manual_seed(seed)
    sizes = [[30_000, 50_000, 7], [5, 9], [70_000, 70_001]][seed % 3]
    values = [torch.randint(0, 6, (n,), generator=g).float() for n in sizes]
    candidates = [torch.rand(n, generator=g) > 0.3 for n in sizes]
    seconds = [torch.randint(0, 3, (n,), generator=g).float() for n in sizes]
    functions = [lambda positions, s=s: s.index_select(0, positions) for s in seconds]
    n_candidates = sum(int(c.sum()) for c in candidates)
    for count in [1, n_candidates // 4, n_candidates // 2 + 1, n_candidates - 1]:
        expected = top_count_across(values, candidates, count, tie_break=seconds)
        got = top_count_across(values, candidates, count, tie_break=functions)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)), (sizes, count)
        assert sum(int(k.sum()) for k in got) == count


@pytest.mark.parametrize("kind", [None, "tensor", "function"])
def test_selection_across_tensors_moved_to_the_cpu_gives_the_same_masks(monkeypatch, kind):
    # FORCE, Iter SNIP and NTK-SAP select across tensors on the model's device; on one selection does not run on
    # (MPS: no kthvalue, no float64) it must run on the CPU and give the same masks, back on the scores' device, with
    # a tie-break function still asked on that device. Simulated, as above, by taking the CPU off the list; large
    # enough for the bracketed path and with ties at the threshold.
    from autosparse_hf.masks import topk

    g = torch.Generator().manual_seed(3)
    sizes = [40_000, 9, 60_000]
    values = [torch.randint(0, 5, (n,), generator=g).float() for n in sizes]
    candidates = [torch.rand(sizes[0], generator=g) > 0.3, None, torch.rand(sizes[2], generator=g) > 0.5]
    seconds = [torch.randint(0, 3, (n,), generator=g).float() for n in sizes]
    devices = []

    def asked(s):
        def at(positions):
            devices.append(positions.device)
            return s.index_select(0, positions)

        return at

    breaks = {None: None, "tensor": seconds, "function": [asked(s) for s in seconds]}[kind]
    count = 30_001
    expected = topk.top_count_across(values, candidates, count, tie_break=breaks)
    monkeypatch.setattr(topk, "_SELECTION_DEVICE_TYPES", ("cuda",))
    moved = []
    original = topk._top_count_across_on_cpu

    def spy(*args):
        moved.append(True)
        return original(*args)

    monkeypatch.setattr(topk, "_top_count_across_on_cpu", spy)
    devices.clear()
    got = topk.top_count_across(values, candidates, count, tie_break=breaks)
    assert moved == [True]  # the CPU path ran (once)
    assert all(torch.equal(a, b) and a.device == b.device for a, b in zip(got, expected, strict=True))
    assert sum(int(k.sum()) for k in got) == count
    assert kind != "function" or (devices and set(devices) == {values[0].device})
