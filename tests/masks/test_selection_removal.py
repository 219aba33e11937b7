"""The removal step of iterative criteria (``autosparse_hf.masks.removal``) against a brute-force stable sort.

A round removes the ``count`` lowest-scoring survivors, ties the last in (tensor, position) order: the survivors
leave in the order (score ascending, position in the concatenation descending). The brute force sorts every survivor
that way; :func:`lowest_alive` (stored scores, numpy and torch paths) and :class:`ProductRound` (scores ``|g| * w``
computed on the fly) must return the same positions and scores, bit for bit, whatever the ties, the sample (brackets that fall short, cuts inside a block of equal scores),
the dtype and the chunking.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from autosparse_hf.masks import product_round, removal
from autosparse_hf.masks.product_round import ProductRound
from autosparse_hf.masks.removal import lowest_alive

PATTERNS = ("continuous", "zeros", "few", "equal", "sorted", "reversed", "periodic")


def _magnitudes(rng: np.random.Generator, n: int, pattern: str, dtype: type) -> np.ndarray:
    if pattern == "continuous":
        values = rng.random(n)
    elif pattern == "zeros":  # mostly exact zeros (a zero-initialized block)
        values = np.where(rng.random(n) < 0.85, 0.0, rng.random(n))
    elif pattern == "few":
        values = rng.integers(0, 3, n).astype(float)
    elif pattern == "equal":
        values = np.full(n, 0.25)
    elif pattern == "sorted":
        values = np.sort(rng.random(n))
    elif pattern == "reversed":
        values = np.sort(rng.random(n))[::-1].copy()
    else:  # periodic with a period that a strided sample could alias with
        values = np.tile(rng.random(64), n // 64 + 1)[:n]
    return values.astype(dtype)


def _case(seed: int, large: bool) -> tuple[list[np.ndarray], list[np.ndarray], list[int], np.dtype]:
    """Gradients and weights (``|w|``, pruned at ``-0.0``) of a few tensors, and their survivor counts."""
    rng = np.random.default_rng(seed)
    picker = random.Random(seed)
    dtype = picker.choice([np.float32, np.float64])
    sizes = [picker.choice([0, 1, 7, 300, 5000]) for _ in range(picker.randint(1, 4))]
    if large:  # enough entries for the sampled bracket
        sizes[picker.randrange(len(sizes))] = picker.choice([70_000, 150_000])
    grads, weights, alive = [], [], []
    for n in sizes:
        grad = _magnitudes(rng, n, picker.choice(PATTERNS), dtype) * rng.choice([-1.0, 1.0], n).astype(dtype)
        weight = _magnitudes(rng, n, picker.choice(PATTERNS), dtype)
        if picker.random() < 0.5:  # gradient 1 where the weight carries the score's pattern alone
            grad = np.ones(n, dtype=dtype)
        pruned = rng.random(n) < picker.choice([0.0, 0.3, 0.9, 1.0])
        weight[pruned] = -0.0
        grads.append(grad)
        weights.append(weight)
        alive.append(int(n - pruned.sum()))
    return grads, weights, alive, np.dtype(dtype)


def _brute_force(scores: list[np.ndarray], count: int) -> list[np.ndarray]:
    """Positions of the ``count`` survivors leaving first: (score ascending, concatenation position descending)."""
    flat = np.concatenate(scores) if scores else np.empty(0)
    place = np.arange(flat.size)
    alive = ~np.signbit(flat)
    order = np.lexsort((-place[alive], flat[alive]))
    leaving = np.zeros(flat.size, dtype=bool)
    leaving[place[alive][order[:count]]] = True
    result, offset = [], 0
    for s in scores:
        result.append(np.flatnonzero(leaving[offset : offset + s.size]))
        offset += s.size
    return result


def _scores(grads: list[np.ndarray], weights: list[np.ndarray]) -> list[np.ndarray]:
    return [np.abs(g) * w for g, w in zip(grads, weights, strict=True)]


def _check(found, expected, scores) -> None:  # noqa: ANN001
    positions, values = found
    assert len(positions) == len(expected)
    for p, v, e, s in zip(positions, values, expected, scores, strict=True):
        assert p.dtype == np.int64
        np.testing.assert_array_equal(p, e)
        assert v.dtype == s.dtype and np.array_equal(v.view(np.uint8), s[e].view(np.uint8))  # bit for bit


def _counts(picker: random.Random, alive: int) -> list[int]:
    return sorted({0, alive, min(1, alive), alive // 2, picker.randint(0, alive), int(alive * 0.023), int(alive * 0.98)})


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("large", [False, True])
def test_global_removal_is_the_brute_force_order(seed, large, monkeypatch):
    monkeypatch.setattr(product_round, "_CHUNK", random.Random(seed).choice([1 << 10, 1 << 17]))
    grads, weights, alive, _ = _case(seed, large)
    scores = _scores(grads, weights)
    picker = random.Random(seed + 1000)
    for count in _counts(picker, sum(alive)):
        expected = _brute_force(scores, count)
        _check(ProductRound(grads, weights).select(alive, count), expected, scores)
        _check(lowest_alive([torch.from_numpy(s) for s in scores], alive, count), expected, scores)


@pytest.mark.parametrize("seed", range(20))
def test_per_tensor_removal_is_the_brute_force_order_of_each_tensor(seed):
    grads, weights, alive, _ = _case(seed, large=seed % 2 == 0)
    scores = _scores(grads, weights)
    picker = random.Random(seed)
    counts = [picker.choice(_counts(picker, a)) for a in alive]
    expected = [_brute_force([s], c)[0] for s, c in zip(scores, counts, strict=True)]
    _check(ProductRound(grads, weights).select(alive, counts), expected, scores)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_sample_that_misleads_the_bracket_costs_a_pass_not_the_answer(dtype, monkeypatch):
    # The sampled positions hold the smallest scores and everything else is larger: the first bracket (and the wider
    # one) hold too few survivors, and the next pass lists them all.
    sizes = [90_000, 40_000]
    stride, starts, _ = removal.sampling(sizes)
    rng = np.random.default_rng(1)
    weights = []
    for n, start in zip(sizes, starts, strict=True):
        w = (1.0 + rng.random(n)).astype(dtype)
        w[start::stride] = rng.random(w[start::stride].size).astype(dtype) * 1e-3
        weights.append(w)
    grads = [np.ones(n, dtype=dtype) for n in sizes]
    passes = []
    real = ProductRound._pass
    monkeypatch.setattr(ProductRound, "_pass", lambda self, i, b, maximum: passes.append(maximum) or real(self, i, b, maximum))
    for count in (500, 5_000, 60_000):
        passes.clear()
        _check(ProductRound(grads, weights).select(sizes, count), _brute_force(weights, count), weights)
        assert not all(passes)  # the bracket fell short at least once: a pass for candidates only
        _check(lowest_alive([torch.from_numpy(w) for w in weights], sizes, count), _brute_force(weights, count), weights)


def test_the_torch_path_gives_what_numpy_gives(monkeypatch):
    grads, weights, alive, _ = _case(3, large=True)
    scores = [torch.from_numpy(s) for s in _scores(grads, weights)]
    count = sum(alive) // 3
    expected = lowest_alive(scores, alive, count)
    monkeypatch.setattr(removal, "NUMPY_ON_CPU", False)
    found = lowest_alive(scores, alive, count)
    for a, b in zip(expected[0] + expected[1], found[0] + found[1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_cut_inside_a_block_of_equal_scores_lists_only_what_leaves(monkeypatch):
    # 94% exact zeros (timm's zero-initialized blocks): the bracket ends inside the zeros, so a round lists about what
    # it removes, not every zero.
    rng = np.random.default_rng(0)
    n = 1_000_000
    weight = np.where(rng.random(n) < 0.94, 0.0, rng.random(n)).astype(np.float32)
    grad = np.ones(n, dtype=np.float32)
    listed = []
    real = removal.lowest_flags
    monkeypatch.setattr(removal, "lowest_flags", lambda keys, count: listed.append(sum(k.size for k in keys)) or real(keys, count))
    count = 23_000
    found = ProductRound([grad], [weight]).select([n], count)
    _check(found, _brute_force([weight], count), [weight])
    assert listed[0] < 2 * count


def test_non_finite_scores_are_reported_not_selected():
    grad = np.ones(100, dtype=np.float32)
    weight = np.full(100, 0.5, dtype=np.float32)
    weight[:10] = -0.0
    for where in (5, 50):  # a pruned weight's gradient (-0.0 * inf is NaN), a survivor's
        bad = grad.copy()
        bad[where] = np.inf
        scores = ProductRound([bad], [weight])
        assert scores.select([90], 10) is None and not scores.finite
        assert not ProductRound([bad], [weight]).finite
    assert ProductRound([grad], [weight]).finite


def test_several_threads_give_what_one_gives():
    grads, weights, alive, _ = _case(5, large=True)
    count = sum(alive) // 4
    expected = ProductRound(grads, weights).select(alive, count)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        found = ProductRound(grads, weights).select(alive, count)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(expected[0] + expected[1], found[0] + found[1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_impossible_counts_are_refused():
    with pytest.raises(ValueError, match="cannot remove 4 of 3 survivors"):
        lowest_alive([torch.tensor([1.0, 2.0, 3.0])], [3], 4)
    with pytest.raises(ValueError, match="cannot remove"):
        ProductRound([np.ones(3)], [np.ones(3)]).select([3], -1)
