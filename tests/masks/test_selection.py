"""Selection from scores to masks (``autosparse_hf.masks.selection``): exact counts, ties, monotonicity, budgets."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from autosparse_hf import MaskSet, select_masks

SCOPES = ("global", "uniform", "erk")
SPARSITIES = [0.0, 0.05, 0.1, 1 / 3, 0.5, 0.6, 0.75, 0.9, 0.95, 0.99, 0.999]
SHAPES = {"conv.weight": (6, 3, 3, 3), "fc1.weight": (40, 54), "fc2.weight": (10, 40), "norm.weight": (17,)}


def random_scores(seed: int = 0, shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=generator) for name, shape in shapes.items()}


def tied_scores(seed: int = 0) -> dict[str, torch.Tensor]:
    """Scores with many exact ties (only five distinct values)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randint(0, 5, shape, generator=generator).float() for name, shape in SHAPES.items()}


def kept(masks: MaskSet) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks.items()}


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("make_scores", [random_scores, tied_scores])
def test_kept_count_is_exact(scope, make_scores):
    scores = make_scores()
    total = sum(s.numel() for s in scores.values())
    for sparsity in SPARSITIES + [i / 97 for i in range(97)]:
        masks = select_masks(scores, sparsity, scope=scope)
        assert masks.num_kept == round((1 - sparsity) * total), (scope, sparsity)
        assert masks.numel == total
        assert list(masks) == list(scores)
        for name, mask in masks.items():
            assert mask.dtype == torch.bool and mask.shape == scores[name].shape


def test_global_keeps_the_highest_scores():
    scores = random_scores(1)
    masks = select_masks(scores, 0.7)
    flat_scores = torch.cat([s.flatten() for s in scores.values()])
    flat_mask = torch.cat([m.flatten() for m in masks.values()])
    assert flat_scores[flat_mask].min() > flat_scores[~flat_mask].max()


def test_all_equal_scores_keep_the_first_weights_in_parameter_order():
    scores = {name: torch.ones(shape) for name, shape in SHAPES.items()}
    total = sum(s.numel() for s in scores.values())
    for sparsity in (0.3, 0.5, 0.9):
        k = round((1 - sparsity) * total)
        flat = torch.cat([m.flatten() for m in select_masks(scores, sparsity).values()])
        expected = torch.zeros(total, dtype=torch.bool)
        expected[:k] = True
        assert torch.equal(flat, expected)
    # Parameter order is the order of the mapping: reversing it moves the kept weights to the other end.
    reversed_scores = dict(reversed(list(scores.items())))
    masks = select_masks(reversed_scores, 0.9)
    k = round(0.1 * total)
    last_name = list(reversed_scores)[0]
    assert int(masks[last_name].sum()) == min(k, scores[last_name].numel())


@pytest.mark.parametrize("scope", SCOPES)
def test_ties_within_a_tensor_go_to_the_first_positions(scope):
    scores = {"a.weight": torch.ones(8, 8), "b.weight": torch.ones(4, 16)}
    masks = select_masks(scores, 0.5, scope=scope)
    for mask in masks.values():
        flat = mask.flatten()
        n = int(flat.sum())
        assert flat[:n].all() and not flat[n:].any()


@pytest.mark.parametrize("scope", SCOPES)
def test_same_call_twice_gives_the_same_mask(scope):
    scores = tied_scores(3)
    first = select_masks(scores, 0.8, scope=scope)
    second = select_masks({n: s.clone() for n, s in scores.items()}, 0.8, scope=scope)
    for name in first:
        assert torch.equal(first[name], second[name])


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("make_scores", [random_scores, tied_scores])
@pytest.mark.parametrize("min_density", [0.0, 0.05])
def test_masks_are_nested_for_increasing_sparsity(scope, make_scores, min_density):
    scores = make_scores(5)
    previous = None
    for sparsity in [i / 50 for i in range(0, 50)]:
        try:
            masks = select_masks(scores, sparsity, scope=scope, min_density=min_density)
        except ValueError:
            assert min_density > 0  # min_density cannot be honoured any more at high sparsity
            break
        if previous is not None:
            assert masks.is_subset_of(previous), (scope, sparsity)
            assert masks.num_kept <= previous.num_kept
        previous = masks


@pytest.mark.parametrize("scope", SCOPES)
def test_existing_mask_is_never_revived(scope):
    scores = random_scores(2)
    existing = select_masks({n: -s for n, s in scores.items()}, 0.5, scope="global")  # prunes the TOP scores
    masks = select_masks(scores, 0.7, scope=scope, existing=existing)
    total = sum(s.numel() for s in scores.values())
    assert masks.num_kept == round(0.3 * total)
    assert masks.is_subset_of(existing)
    for name, mask in masks.items():
        assert not (mask & ~existing[name]).any()
    if scope == "global":
        # Among the weights still alive, the best ones are kept.
        flat_scores = torch.cat([s.flatten() for s in scores.values()])
        alive = torch.cat([m.flatten() for m in existing.values()])
        keep = torch.cat([m.flatten() for m in masks.values()])
        assert flat_scores[keep].min() > flat_scores[alive & ~keep].max()


@pytest.mark.parametrize("scope", SCOPES)
def test_target_keeping_more_than_existing_is_an_error(scope):
    scores = random_scores()
    existing = select_masks(scores, 0.6)
    with pytest.raises(ValueError, match="revive"):
        select_masks(scores, 0.5, scope=scope, existing=existing)
    assert select_masks(scores, 0.6, scope=scope, existing=existing).num_kept == existing.num_kept


def test_existing_mask_missing_a_parameter_is_an_error():
    scores = random_scores()
    existing = dict(select_masks(scores, 0.5))
    del existing["fc2.weight"]
    with pytest.raises(ValueError, match="fc2.weight"):
        select_masks(scores, 0.6, existing=existing)


def collapse_scores() -> dict[str, torch.Tensor]:
    """A global top-k would remove every weight of ``small.weight``: its scores are far below all the others."""
    generator = torch.Generator().manual_seed(0)
    return {
        "big.weight": 1.0 + torch.rand(30, 20, generator=generator),
        "small.weight": 1e-6 * torch.rand(37, generator=generator),
        "other.weight": 1.0 + torch.rand(8, 10, generator=generator),
    }


@pytest.mark.parametrize("scope", SCOPES)
def test_min_density_prevents_layer_collapse(scope):
    scores = collapse_scores()
    total = sum(s.numel() for s in scores.values())
    if scope == "global":
        assert int(select_masks(scores, 0.8)["small.weight"].sum()) == 0  # the collapse min_density prevents
    for min_density in (0.1, 0.15):
        masks = select_masks(scores, 0.8, scope=scope, min_density=min_density)
        assert masks.num_kept == round(0.2 * total)
        for name, mask in masks.items():
            assert int(mask.sum()) >= math.ceil(min_density * mask.numel()), (name, min_density)
        if scope == "global":
            # The reserve is exactly the minimum, and it is the tensor's best weights.
            small, small_mask = scores["small.weight"], masks["small.weight"]
            assert int(small_mask.sum()) == math.ceil(min_density * small.numel())
            assert small[small_mask].min() > small[~small_mask].max()


@pytest.mark.parametrize("scope", SCOPES)
def test_impossible_min_density_is_an_error(scope):
    with pytest.raises(ValueError, match="min_density"):
        select_masks(collapse_scores(), 0.9, scope=scope, min_density=0.5)
    with pytest.raises(ValueError, match="min_density"):
        select_masks(collapse_scores(), 0.5, scope=scope, min_density=1.5)


def common_multiplier(kept_counts: dict[str, int], weights: dict[str, float], sizes: dict[str, int]) -> None:
    """Assert there is one ``lam`` with ``kept = min(round(lam * weight), size)`` for every tensor.

    ``round(lam * w) = c`` means ``lam`` lies in ``[(c - 0.5) / w, (c + 0.5) / w]``; a capped tensor only needs
    ``lam * w >= size - 0.5``.
    """
    low, high = 0.0, math.inf
    for name, count in kept_counts.items():
        w = weights[name]
        low = max(low, (count - 0.5) / w)
        if count < sizes[name]:
            high = min(high, (count + 0.5) / w)
    assert low <= high + 1e-12, (kept_counts, low, high)


def test_uniform_gives_every_tensor_the_target_density():
    scores = random_scores(4)
    sizes = {n: s.numel() for n, s in scores.items()}
    for sparsity in SPARSITIES:
        masks = select_masks(scores, sparsity, scope="uniform")
        for name, density in masks.layer_density().items():
            assert abs(density - (1 - sparsity)) <= 1 / sizes[name], (name, sparsity, density)
        common_multiplier(kept(masks), {n: float(sizes[n]) for n in sizes}, sizes)


def test_uniform_keeps_each_tensors_best_weights():
    scores = random_scores(6)
    masks = select_masks(scores, 0.6, scope="uniform")
    for name, mask in masks.items():
        assert scores[name][mask].min() > scores[name][~mask].max()


def test_erk_densities_follow_sum_over_prod_of_shape():
    shapes = {
        "tiny.weight": (2, 2),
        "small.weight": (4, 4),
        "mid.weight": (8, 16),
        "conv.weight": (16, 8, 3, 3),
        "big.weight": (32, 64),
    }
    scores = random_scores(7, shapes)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    ratio = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    saw_cap = False
    for sparsity in (0.5, 0.8, 0.9, 0.95):
        masks = select_masks(scores, sparsity, scope="erk")
        counts = kept(masks)
        common_multiplier(counts, {n: float(sum(s)) for n, s in shapes.items()}, sizes)
        densities = masks.layer_density()
        uncapped = [n for n in shapes if counts[n] < sizes[n]]
        saw_cap |= len(uncapped) < len(shapes)
        # Density / (sum/prod) is the same for every uncapped tensor, up to rounding to whole weights.
        for a in uncapped:
            for b in uncapped:
                slack = 0.5 / sum(shapes[a]) + 0.5 / sum(shapes[b])
                assert abs(densities[a] / ratio[a] - densities[b] / ratio[b]) <= slack + 1e-12
        # Denser for larger sum/prod.
        order = sorted(shapes, key=lambda n: ratio[n])
        assert all(densities[x] <= densities[y] for x, y in pairwise(order))
    assert saw_cap  # the (2, 2) tensor is capped at density 1 at the lower sparsities


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("scope", SCOPES)
def test_non_finite_scores_are_rejected_naming_the_parameter(bad, scope):
    scores = random_scores()
    scores["fc2.weight"][3, 4] = bad
    with pytest.raises(ValueError, match="fc2.weight"):
        select_masks(scores, 0.5, scope=scope)


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, 2, float("nan")])
def test_sparsity_outside_unit_interval_is_rejected_naming_the_value(sparsity):
    with pytest.raises(ValueError, match="sparsity") as info:
        select_masks(random_scores(), sparsity)
    assert repr(sparsity) in str(info.value)


@pytest.mark.parametrize("sparsity", [True, "0.5", None])
def test_sparsity_of_wrong_type_is_rejected(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        select_masks(random_scores(), sparsity)


def test_unknown_scope_is_an_error_listing_the_scopes():
    with pytest.raises(ValueError, match="layerwise") as info:
        select_masks(random_scores(), 0.5, scope="layerwise")
    for scope in SCOPES:
        assert scope in str(info.value)


def test_empty_scores_are_an_error():
    with pytest.raises(ValueError, match="no scores"):
        select_masks({}, 0.5)


def test_metadata_records_how_masks_were_made():
    masks = select_masks(random_scores(), 0.5, scope="erk", metadata={"criterion": "magnitude"})
    assert masks.metadata == {"sparsity": 0.5, "scope": "erk", "min_density": 0.0, "criterion": "magnitude"}
