"""Linear-time selection against the sort-based implementation it replaced: the same masks, bit for bit.

``_reference_select_masks`` is the previous ``select_masks`` verbatim (a stable sort per tensor to rank, then a
stable sort of all keys); ``_ReferenceSynFlow`` is the previous SynFlow round loop on top of it. Randomized cases
cover shapes (scalars, empty tensors, a tensor large enough for the sampled bracket), tie patterns (exact zeros,
all equal, a few distinct values, signed zeros), score dtypes, existing masks, ``min_density`` and every scope.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from autosparse_hf import compute_scores, select_masks
from autosparse_hf.criteria.synflow import SynFlowCriterion
from autosparse_hf.masks.selection import SCOPES
from autosparse_hf.masks.topk import top_count


def _reference_layer_weight(shape: torch.Size, scope: str) -> float:
    numel = math.prod(shape)
    if scope == "uniform":
        return float(numel)
    return float(sum(shape)) if len(shape) > 1 else float(numel)


def _reference_select_masks(  # noqa: C901 - kept as it was
    scores, sparsity, *, scope="global", min_density=0.0, existing=None, layer_counts=None
) -> dict[str, torch.Tensor]:
    """The sort-based ``select_masks`` this module replaced (validation included), returning plain masks."""
    from autosparse_hf.masks.selection import check_scores, check_sparsity, num_to_keep

    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of {SCOPES}")
    if not 0.0 <= min_density <= 1.0:
        raise ValueError(f"min_density must be in [0, 1], got {min_density!r}")
    if not scores:
        raise ValueError("no scores to select from")
    check_scores(scores)
    names = list(scores)
    if existing is not None:
        missing = [n for n in names if n not in existing]
        if missing:
            raise ValueError(f"existing mask lacks parameters {missing}")
    total = sum(scores[n].numel() for n in names)
    k = num_to_keep(total, sparsity)
    if scope == "counts":
        if min_density:
            raise ValueError('min_density does not apply to scope="counts": the layer counts are given')
        if layer_counts is None:
            raise ValueError('scope="counts" needs layer_counts (per-tensor kept counts, e.g. from an IRP ticket)')
        missing = [n for n in names if n not in layer_counts]
        if missing:
            raise ValueError(f"layer_counts lacks tensors {missing}")
        if sum(int(layer_counts[n]) for n in names) != k:
            raise ValueError(
                f"layer_counts keep {sum(int(layer_counts[n]) for n in names)} weights but sparsity {sparsity} keeps {k}"
            )
    keys = []
    alive_total = 0
    reserved_total = 0
    for name in names:
        flat = scores[name].detach().reshape(-1).to(torch.float64).cpu()
        alive = (
            existing[name].reshape(-1).bool().cpu() if existing is not None else torch.ones_like(flat, dtype=torch.bool)
        )
        n_alive = int(alive.sum())
        alive_total += n_alive
        ranked = torch.where(alive, flat, torch.tensor(-math.inf, dtype=torch.float64))
        order = torch.sort(ranked, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        if scope == "global":
            key = -flat
        elif scope == "counts":
            count = int(layer_counts[name])
            if count > n_alive:
                raise ValueError(f"layer_counts asks {count} weights of {name!r}, which has only {n_alive} unpruned")
            key = torch.where(rank < count, rank.to(torch.float64), torch.tensor(math.inf, dtype=torch.float64))
        else:
            key = (rank.to(torch.float64) + 0.5) / _reference_layer_weight(scores[name].shape, scope)
        n_reserved = min(math.ceil(min_density * flat.numel()), n_alive)
        reserved_total += n_reserved
        key = torch.where(rank < n_reserved, torch.tensor(-math.inf, dtype=torch.float64), key)
        key = torch.where(alive, key, torch.tensor(math.inf, dtype=torch.float64))
        keys.append(key)
    if k > alive_total:
        raise ValueError(
            f"sparsity {sparsity} keeps {k} weights but the existing mask keeps only {alive_total}; "
            "selection never revives a pruned weight"
        )
    if reserved_total > k:
        raise ValueError(
            f"min_density={min_density} reserves {reserved_total} weights, more than the {k} kept at "
            f"sparsity {sparsity}"
        )
    all_keys = torch.cat(keys)
    chosen = torch.sort(all_keys, stable=True).indices[:k]
    keep = torch.zeros(total, dtype=torch.bool)
    keep[chosen] = True
    masks = {}
    offset = 0
    for name in names:
        n = scores[name].numel()
        masks[name] = keep[offset : offset + n].reshape(scores[name].shape).to(scores[name].device)
        offset += n
    return masks


# --------------------------------------------------------------------------------------------------------------------
# Random cases

SHAPES = [(), (1,), (7,), (17,), (3, 5), (10, 4), (6, 3, 3, 3), (4, 3, 2, 2), (0, 4), (2, 50), (31,)]
PATTERNS = ("continuous", "zeros", "equal", "few", "signed_zeros", "negative", "tiny_range")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.int64)


def _values(rng: torch.Generator, shape: tuple[int, ...], pattern: str, dtype: torch.dtype) -> torch.Tensor:
    if pattern == "continuous":
        values = torch.rand(shape, generator=rng) * 10
    elif pattern == "zeros":  # mostly exact zeros, a few positive
        values = torch.where(torch.rand(shape, generator=rng) < 0.8, 0.0, torch.rand(shape, generator=rng))
    elif pattern == "equal":
        values = torch.full(shape, 0.25)
    elif pattern == "few":
        values = torch.randint(0, 3, shape, generator=rng).float()
    elif pattern == "signed_zeros":  # +0.0 and -0.0 tie
        values = torch.where(torch.rand(shape, generator=rng) < 0.5, 0.0, -0.0)
        values = torch.where(torch.rand(shape, generator=rng) < 0.2, 1.0, values)
    elif pattern == "negative":
        values = torch.randn(shape, generator=rng).round(decimals=1)
    else:  # values that collide once converted to float16
        values = 1.0 + torch.rand(shape, generator=rng) * 1e-3
    if dtype == torch.int64:
        return (values * 4).round().to(torch.int64)
    return values.to(dtype)


def _random_existing(rng: torch.Generator, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    kind = int(torch.randint(0, 4, (1,), generator=rng))
    if kind == 0:
        return None
    existing = {}
    for name, s in scores.items():
        if kind == 1:  # random survivors
            existing[name] = torch.rand(s.shape, generator=rng) < 0.7
        elif kind == 2:  # some tensors fully pruned, some fully alive
            existing[name] = torch.full(s.shape, bool(torch.rand(1, generator=rng) < 0.6))
        else:  # a prefix alive
            flat = torch.zeros(s.numel(), dtype=torch.bool)
            flat[: int(torch.randint(0, s.numel() + 1, (1,), generator=rng))] = True
            existing[name] = flat.reshape(s.shape)
    return existing


def _random_layer_counts(
    rng: torch.Generator, scores: dict[str, torch.Tensor], existing: dict[str, torch.Tensor] | None, k: int
) -> dict[str, int]:
    """Per-tensor counts summing to ``k`` (each at most the tensor's alive count when that is possible)."""
    alive = {n: int(existing[n].sum()) if existing is not None else s.numel() for n, s in scores.items()}
    counts = dict.fromkeys(scores, 0)
    remaining = k
    for name in sorted(scores, key=lambda _: float(torch.rand(1, generator=rng))):
        take = int(torch.randint(0, min(alive[name], remaining) + 1, (1,), generator=rng))
        counts[name] = take
        remaining -= take
    for name in scores:  # fill up what is left where there is room
        take = min(alive[name] - counts[name], remaining)
        counts[name] += take
        remaining -= take
    counts[list(scores)[0]] += remaining  # an impossible split when the alive weights cannot hold k
    return counts


def _compare(scores, sparsity, **kwargs) -> None:
    try:
        expected = _reference_select_masks(scores, sparsity, **kwargs)
    except ValueError as error:
        with pytest.raises(ValueError) as info:
            select_masks(scores, sparsity, **kwargs)
        assert str(info.value) == str(error)
        return
    masks = select_masks(scores, sparsity, **kwargs)
    assert list(masks) == list(expected)
    for name, mask in expected.items():
        assert masks[name].dtype == torch.bool and masks[name].shape == mask.shape
        assert torch.equal(masks[name], mask), (name, kwargs.get("scope"), sparsity)


@pytest.mark.parametrize("seed", range(40))
def test_random_cases_match_the_sort_based_selection(seed):
    rng = torch.Generator().manual_seed(seed)
    picker = random.Random(seed)
    for _ in range(15):
        names = [f"t{i}.weight" for i in range(picker.randint(1, 4))]
        pattern, dtype = picker.choice(PATTERNS), picker.choice(DTYPES)
        scores = {
            name: _values(rng, picker.choice(SHAPES), pattern if picker.random() < 0.8 else "continuous", dtype)
            for name in names
        }
        if sum(s.numel() for s in scores.values()) == 0:
            continue
        existing = _random_existing(rng, scores)
        sparsity = picker.choice([0.0, 0.1, 1 / 3, 0.5, 0.9, 0.99, picker.random()])
        if existing is not None and picker.random() < 0.8:  # mostly a target the existing mask can meet
            alive = sum(int(m.sum()) for m in existing.values()) / sum(s.numel() for s in scores.values())
            sparsity = min(1.0 - alive * picker.random(), 0.999)
        scope = picker.choice(SCOPES)
        if scope == "counts":
            total = sum(s.numel() for s in scores.values())
            k = round((1 - sparsity) * total)
            _compare(
                scores,
                sparsity,
                scope=scope,
                existing=existing,
                layer_counts=_random_layer_counts(rng, scores, existing, k),
            )
        else:
            min_density = picker.choice([0.0, 0.0, 0.05, 0.3])
            _compare(scores, sparsity, scope=scope, existing=existing, min_density=min_density)


@pytest.mark.parametrize("scope", ("global", "uniform", "erk"))
@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_sparsity_on_one_tie_pattern_matches(scope, pattern):
    rng = torch.Generator().manual_seed(3)
    scores = {
        n: _values(rng, shape, pattern, torch.float32)
        for n, shape in {"a.weight": (6, 3, 3), "b.weight": (20, 9), "c.weight": (13,)}.items()
    }
    existing = {n: torch.rand(s.shape, generator=rng) < 0.8 for n, s in scores.items()}
    for sparsity in [i / 41 for i in range(41)]:
        _compare(scores, sparsity, scope=scope)
        _compare(scores, sparsity, scope=scope, min_density=0.1)
        _compare(scores, sparsity, scope=scope, existing=existing)


def _large_scores(pattern: str) -> dict[str, torch.Tensor]:
    """More than 2^16 weights in one tensor, so that the sampled bracket (and its fallback) runs."""
    rng = torch.Generator().manual_seed(11)
    big = torch.rand(300, 300, generator=rng)
    if pattern == "sorted":
        big = torch.sort(big.flatten()).values.reshape(300, 300)
    elif pattern == "zeros":
        big = torch.where(torch.rand(300, 300, generator=rng) < 0.9, 0.0, big)
    elif pattern == "strided":  # every sampled position holds the largest value: the bracket misses
        flat = big.flatten()
        flat[:: 90000 // (1 << 14)] = 2.0
        big = flat.reshape(300, 300)
    elif pattern == "few":
        big = torch.randint(0, 4, (300, 300), generator=rng).float()
    return {"big.weight": big, "small.weight": torch.rand(40, 30, generator=rng), "bias.weight": torch.rand(50)}


@pytest.mark.parametrize("pattern", ("continuous", "sorted", "zeros", "strided", "few"))
def test_large_tensors_match(pattern):
    scores = _large_scores(pattern)
    existing = {n: torch.rand(s.shape, generator=torch.Generator().manual_seed(5)) < 0.9 for n, s in scores.items()}
    for sparsity in (0.0, 0.02, 0.5, 0.9, 0.98, 0.9999):
        for scope in ("global", "uniform", "erk"):
            _compare(scores, sparsity, scope=scope)
        _compare(scores, sparsity, existing=existing)
        _compare(scores, sparsity, scope="uniform", existing=existing, min_density=0.05)
    total = sum(s.numel() for s in scores.values())
    k = round(0.2 * total)
    counts = {"big.weight": k - 1000, "small.weight": 900, "bias.weight": 100}
    _compare(scores, 0.8, scope="counts", layer_counts=counts)


@pytest.mark.parametrize("pattern", ("continuous", "sorted", "zeros", "strided", "few"))
def test_top_count_is_the_head_of_a_stable_descending_sort(pattern):
    values = _large_scores(pattern)["big.weight"].flatten()
    for dtype in (torch.float32, torch.float64, torch.float16):
        v = values.to(dtype)
        order = torch.sort(v.double(), descending=True, stable=True).indices
        for count in (0, 1, 17, 1000, 45_000, 89_999, 90_000, 100_000):
            expected = torch.zeros(v.numel(), dtype=torch.bool)
            expected[order[:count]] = True
            assert torch.equal(top_count(v, count), expected), (pattern, dtype, count)


def test_min_density_and_counts_errors_match():
    rng = torch.Generator().manual_seed(0)
    scores = {"a.weight": torch.rand(10, 10, generator=rng), "b.weight": torch.rand(5, generator=rng)}
    existing = {"a.weight": torch.rand(10, 10, generator=rng) < 0.3, "b.weight": torch.ones(5, dtype=torch.bool)}
    _compare(scores, 0.1, existing=existing)  # revive
    _compare(scores, 0.9, min_density=0.5)  # reserve too large
    _compare(scores, 0.5, scope="counts", layer_counts={"a.weight": 50, "b.weight": 3})  # sum mismatch
    _compare(scores, 0.9, scope="counts", layer_counts={"a.weight": 0, "b.weight": 11}, existing=existing)
    _compare(scores, 0.5, scope="counts", layer_counts={"a.weight": 50, "b.weight": 3}, min_density=0.1)
    _compare(scores, 0.5, scope="counts")  # no counts


# --------------------------------------------------------------------------------------------------------------------
# SynFlow keeps its scores


@dataclass
class _ReferenceSynFlow(SynFlowCriterion):
    """The previous SynFlow round loop: ``select_masks`` (sort-based) on whole tensors every round."""

    name = "synflow_reference"
    writes_weights = True  # it leaves |w| * mask in the model; compute_scores restores the weights

    def score(self, context):  # noqa: ANN001, ANN201
        from autosparse_hf.gradients import take_batches

        model, params, family = context.model, context.params, context.family
        batch = take_batches(context.dataloader, 1, "synflow")[0] if context.dataloader is not None else None
        inputs = family.synflow_inputs(model, batch)
        model.eval()
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
        magnitudes = {n: p.param.detach().clone() for n, p in params.items()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.param.requires_grad_(True)
        mask = {
            n: (context.existing[n].bool() if context.existing is not None else torch.ones_like(m, dtype=torch.bool))
            for n, m in magnitudes.items()
        }
        result = {n: torch.where(mask[n], 0.0, -1.0).to(torch.float64) for n in params}
        target_density = 1.0 - context.sparsity
        total = sum(m.numel() for m in mask.values())
        budgets = self.budgets if self.budgets is not None else context.budgets
        for k in range(1, self.rounds + 1):
            with torch.no_grad():
                for n, p in params.items():
                    p.param.copy_(magnitudes[n] * mask[n])
                    p.param.grad = None
            family.synflow_output(model, inputs).sum().backward()
            scores = {n: (p.param.detach() * p.param.grad).abs() for n, p in params.items()}
            if budgets is None:
                density = target_density ** (k / self.rounds)
                alive = sum(int(m.sum()) for m in mask.values())
                density = min(density, alive / total)
                new_mask = _reference_select_masks(scores, 1.0 - density, existing=mask)
            else:
                counts = {}
                for n in params:
                    numel = mask[n].numel()
                    count = (
                        budgets[n]
                        if k == self.rounds
                        else round(numel * (max(budgets[n], 0) / numel) ** (k / self.rounds))
                    )
                    counts[n] = int(min(max(count, budgets[n]), int(mask[n].sum())))
                kept = sum(counts.values())
                new_mask = _reference_select_masks(
                    scores, 1.0 - kept / total, scope="counts", layer_counts=counts, existing=mask
                )
            peak = max(float(s.max()) for s in scores.values()) or 1.0
            for n in params:
                removed = mask[n] & ~new_mask[n]
                result[n] = torch.where(removed, (k - 1) + 0.5 * scores[n].double() / peak, result[n])
            mask = dict(new_mask)
            if k == self.rounds:
                for n in params:
                    result[n] = torch.where(mask[n], self.rounds + scores[n].double() / peak, result[n])
        return result


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


class _Wrapped(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.net = _net(seed)
        self.example_input_shape = (1, 8, 8)

    def forward(self, pixel_values, labels=None):  # noqa: ANN001, ANN201
        return self.net(pixel_values)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("setting", ["global", "budgets", "existing", "tied"])
def test_synflow_scores_are_those_of_the_sort_based_rounds(seed, setting):
    model = _Wrapped(seed)
    if setting == "tied":  # many exact ties: a quantized initialization
        with torch.no_grad():
            for p in model.parameters():
                p.copy_((p * 4).round() / 4)
    kwargs: dict = {"sparsity": 0.95}
    names = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    if setting == "budgets":
        sizes = {n: dict(model.named_parameters())[n].numel() for n in names}
        kwargs["budgets"] = {n: max(1, round(0.05 * s)) for n, s in sizes.items()}
        total = sum(sizes.values())
        kwargs["sparsity"] = 1 - sum(kwargs["budgets"].values()) / total
    if setting == "existing":
        g = torch.Generator().manual_seed(seed)
        kwargs["existing"] = {n: torch.rand(dict(model.named_parameters())[n].shape, generator=g) < 0.5 for n in names}
        kwargs["sparsity"] = 0.9
    expected = compute_scores(model, _ReferenceSynFlow(rounds=20), include=names, **kwargs)
    scores = compute_scores(model, SynFlowCriterion(rounds=20), include=names, **kwargs)
    assert list(scores) == list(expected)
    for name in expected:
        assert scores[name].dtype == expected[name].dtype
        assert torch.equal(scores[name], expected[name]), name


class _Random(nn.Module):
    """A small random network: convolutions with batch norm (zero-initialized scales sometimes, as timm does), a
    zero-initialized or quantized layer sometimes (ties), a wide linear layer (more than one chunk)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        picker = random.Random(seed)
        torch.manual_seed(seed)
        width = picker.choice([4, 8])
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3), nn.ReLU(),
            nn.Flatten(),
        )  # fmt: skip
        hidden = picker.choice([64, 300])
        self.head = nn.Sequential(nn.Linear(width * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        if picker.random() < 0.3:
            nn.init.zeros_(self.features[1].weight)  # revived by compute_scores, as timm's zero_init_last
        if picker.random() < 0.4:
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_((p * 4).round() / 4)
        self.example_input_shape = (1, 8, 8)

    def forward(self, pixel_values, labels=None):  # noqa: ANN001, ANN201
        return self.head(self.features(pixel_values))


@pytest.mark.parametrize("seed", range(12))
def test_random_synflow_runs_are_those_of_the_sort_based_rounds(seed, monkeypatch):
    """Random networks, rounds, sparsities, layer budgets and existing masks, with the fast paths forced into their
    corners (tiny chunks, brackets on small tensors, the torch path):
    the scores of the sort-based rounds, bit for bit."""
    from autosparse_hf.masks import product_round, removal

    picker = random.Random(seed)
    monkeypatch.setattr(product_round, "_CHUNK", picker.choice([64, 1024, 1 << 17]))
    monkeypatch.setattr(removal, "_BRACKET_MIN_SIZE", picker.choice([256, 1 << 16]))
    monkeypatch.setattr(removal, "_BRACKET_SAMPLE_MIN", picker.choice([16, 4096]))
    monkeypatch.setattr(removal, "NUMPY_ON_CPU", picker.random() < 0.8)
    model = _Random(seed)
    names = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    sizes = {n: dict(model.named_parameters())[n].numel() for n in names}
    total = sum(sizes.values())
    rounds = picker.choice([1, 3, 17, 40])
    kwargs: dict = {"sparsity": picker.choice([0.5, 0.9, 0.98])}
    setting = picker.choice(["global", "budgets", "existing"])
    if setting == "budgets":
        kwargs["budgets"] = {n: picker.randint(0, max(1, s // 5)) for n, s in sizes.items()}
        kwargs["sparsity"] = 1 - sum(kwargs["budgets"].values()) / total
    elif setting == "existing":
        g = torch.Generator().manual_seed(seed)
        kwargs["existing"] = {n: torch.rand(dict(model.named_parameters())[n].shape, generator=g) < 0.6 for n in names}
        kwargs["sparsity"] = 0.9
    expected = compute_scores(model, _ReferenceSynFlow(rounds=rounds), include=names, **kwargs)
    scores = compute_scores(model, SynFlowCriterion(rounds=rounds, progress=False), include=names, **kwargs)
    for name in expected:
        assert torch.equal(scores[name], expected[name]), (name, setting, rounds)


def test_synflow_puts_every_parameter_back_bit_for_bit():
    """SynFlow writes |w| and -0.0 into working copies and makes other parameters absolute in place; compute_scores
    copies no weights for it, so SynFlow itself must restore them: signs, negative zeros, NaN payloads included."""
    model = _Wrapped(0)
    with torch.no_grad():
        model.net[0].weight[0, 0, 0, 0] = -0.0
        model.net[0].bias[:3] = torch.tensor([-0.0, -1.5, 2.0])
        model.net[1].bias[0] = float("nan")  # a non-prunable parameter: NaN passes through, and is put back
        model.net[1].bias[0] = -model.net[1].bias[0]  # a NaN with its sign bit set
    names = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]

    def bits(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # -0.0 and the NaN's sign bit count
        return {k: v.view(torch.int32) if v.dtype == torch.float32 else v for k, v in state.items()}

    before = bits({k: v.detach().clone() for k, v in model.state_dict().items()})
    with pytest.raises(ValueError, match="not finite"):  # the NaN reaches the output in every numeric tier
        compute_scores(model, SynFlowCriterion(rounds=3, progress=False), include=names, sparsity=0.5)
    after = bits(model.state_dict())
    assert all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        model.net[1].bias[0] = 0.5
    before = bits({k: v.detach().clone() for k, v in model.state_dict().items()})
    compute_scores(model, SynFlowCriterion(rounds=3, progress=False), include=names, sparsity=0.5)
    after = bits(model.state_dict())
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("above_mass", [0.02, 0.06, 0.15])
@pytest.mark.parametrize("across", [False, True])
def test_a_bracket_ending_on_a_mass_of_equal_values_gathers_none_of_them(above_mass, across, monkeypatch):
    # Iter SNIP selects with its pruned weights at -1 (most entries late in the schedule) and a count just below the
    # eligible ones: the sampled bracket reaches down to -1. The entries equal to the bracket's low end are counted,
    # not gathered (on GPT-2 small most of its 85M prunable weights, and a k-th value search over them, per step), and
    # the answer is still exactly the stable sort's.
    import autosparse_hf.masks.topk as topk

    gathered: list[int] = []
    real = topk.masked_values
    monkeypatch.setattr(topk, "masked_values", lambda v, m: gathered.append(int(m.sum())) or real(v, m))
    g = torch.Generator().manual_seed(int(above_mass * 100) + across)
    n = 400_000
    values = torch.full((n,), -1.0)
    eligible = torch.randperm(n, generator=g)[: int(n * above_mass)]
    values[eligible] = torch.rand(eligible.numel(), generator=g)
    for count in (eligible.numel() - 3, eligible.numel(), eligible.numel() + 5):
        gathered.clear()
        expected = torch.zeros(n, dtype=torch.bool)
        expected[torch.sort(values, descending=True, stable=True).indices[:count]] = True
        if across:
            kept = torch.cat(topk.top_count_across([values[: n // 3], values[n // 3 :]], [None, None], count))
        else:
            kept = top_count(values, count)
        assert torch.equal(kept, expected), count
        assert sum(gathered) <= eligible.numel(), (count, gathered)
