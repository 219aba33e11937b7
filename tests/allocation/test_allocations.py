"""Layer budgets as a registry: every rule by name, counts exact, user rules pluggable, composition explicit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

import autosparse_hf as A
from autosparse_hf.allocation import Allocation, LayerBudgets, get_allocation, register_allocation
from autosparse_hf.criteria.synflow import SynFlowCriterion


class Net(nn.Module):
    example_input_shape = (6,)

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 40)
        self.fc2 = nn.Linear(40, 20)
        self.fc3 = nn.Linear(20, 3)

    def forward(self, pixel_values, labels=None):
        logits = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(pixel_values)))))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def build(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def loader():
    g = torch.Generator().manual_seed(1)
    return [{"pixel_values": torch.randn(8, 6, generator=g), "labels": torch.randint(0, 3, (8,), generator=g)}]


def test_the_registry_lists_every_rule_and_names_unknown_ones():
    assert {"erk", "global", "learned", "ticket", "uniform"} <= set(A.list_budgets())
    assert A.list_budgets() == sorted(A.list_budgets())
    with pytest.raises(ValueError, match="unknown layer budgets 'per-layer'.*erk, global"):
        get_allocation("per-layer")
    with pytest.raises(ValueError, match="needs ticket_source"):
        get_allocation("ticket")
    with pytest.raises(ValueError, match="needs predictor"):
        get_allocation("learned")
    with pytest.raises(ValueError, match="take no option"):
        get_allocation("global", rounds=3)


@pytest.mark.parametrize("budgets", ["global", "uniform", "erk"])
def test_score_rules_are_the_selection_scopes(budgets):
    # A rule allocation is carried out by the selection: the masks equal selecting with that scope directly.
    model = build()
    masks = A.prune_at_init(model, "magnitude", 0.8, budgets=budgets)
    scores = {n: p.detach().abs() for n, p in build().named_parameters() if n.endswith("weight")}
    assert masks.metadata["budgets"] == budgets
    expected = A.select_masks(scores, 0.8, scope=budgets)
    assert all(torch.equal(masks[n], expected[n]) for n in expected)


@dataclass
class HalfFirstLayer(Allocation):
    """A user's rule: the first tensor keeps half of all kept weights, the rest split by size."""

    name: ClassVar[str] = "test-half-first"

    def allocate(self, params, sparsity, model_class="model"):
        names = list(params)
        total = sum(p.param.numel() for p in params.values())
        keep = round((1 - sparsity) * total)
        first = min(keep // 2, params[names[0]].param.numel())
        rest = keep - first
        sizes = [params[n].param.numel() for n in names[1:]]
        counts = [rest * s // sum(sizes) for s in sizes]
        counts[-1] += rest - sum(counts)
        return LayerBudgets("counts", dict(zip(names, [first, *counts], strict=True)))


@pytest.fixture
def half_first():  # noqa: ANN201
    """Registers the user rule for one test and removes it after (the registry is process-wide)."""
    from autosparse_hf.allocation import base

    register_allocation(HalfFirstLayer)
    yield HalfFirstLayer
    base._ALLOCATIONS.pop(HalfFirstLayer.name, None)


def test_a_registered_user_rule_decides_the_counts_for_any_criterion(half_first):
    assert "test-half-first" in A.list_budgets()
    for criterion in ("magnitude", "random", "synflow"):
        masks = A.prune_at_init(build(), criterion, 0.9, loader(), budgets="test-half-first")
        kept = {n: int(m.sum()) for n, m in masks.items()}
        assert kept["fc1.weight"] == masks.num_kept // 2
        assert masks.num_kept == round(0.1 * masks.numel)
        assert masks.metadata["budgets"] == "test-half-first" and masks.metadata["criterion"] == criterion


def test_synflow_iterates_inside_allocated_counts(half_first):
    # SynFlow inside fixed budgets: the allocation's counts reach the criterion, which prunes towards them round by
    # round; the result equals SynFlow given the same counts directly.
    counts = HalfFirstLayer().allocate(A.get_prunable_parameters(build()), 0.9).counts
    via_budgets = A.prune_at_init(build(), "synflow", 0.9, loader(), budgets="test-half-first")
    direct = A.prune_at_init(build(), SynFlowCriterion(budgets=dict(counts)), 0.9, loader())
    assert all(torch.equal(via_budgets[n], direct[n]) for n in direct)
    # Counts fixed with the criterion are its default budgets (budgets="auto").
    assert direct.metadata["budgets"] == "counts" and via_budgets.metadata["budgets"] == "test-half-first"


def test_prune_config_validates_before_any_work():
    with pytest.raises(ValueError, match="unknown criterion 'snp'"):
        A.PruneConfig(criterion="snp")
    with pytest.raises(ValueError, match="unknown layer budgets"):
        A.PruneConfig(criterion="snip", budgets="layerwise")
    with pytest.raises(ValueError, match="sparsity"):
        A.PruneConfig(criterion="snip", sparsity=1.0)
    with pytest.raises(ValueError, match="num_batches"):
        A.PruneConfig(criterion="snip", num_batches=0)
    with pytest.raises(ValueError, match="takes no option"):
        A.PruneConfig(criterion="synflow", criterion_options={"round": 5}).build_criterion()
    with pytest.raises(ValueError, match="unknown criterion 'snp'"):
        A.PaICallback("snp", 0.9)  # at construction, not when training starts
    # A scalar include/exclude is one pattern, never a sequence of characters.
    config = A.PruneConfig(criterion="magnitude", exclude="fc3.weight")
    assert config.exclude == ["fc3.weight"]
    masks = A.prune_at_init(build(), config=config)
    assert "fc3.weight" not in masks


def test_old_spellings_still_work():
    a = A.prune_at_init(build(), "magnitude", 0.8, scope="uniform")
    b = A.prune_at_init(build(), "magnitude", 0.8, budgets="uniform")
    assert all(torch.equal(a[n], b[n]) for n in a)
    with pytest.raises(ValueError, match="disagree"):
        A.prune_at_init(build(), "magnitude", 0.8, scope="uniform", budgets="erk")
    with pytest.raises(TypeError, match="unknown pruning option"):
        A.prune_at_init(build(), "magnitude", 0.8, budget="uniform")


def test_misspelled_names_get_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'snip'"):
        A.PaICallback("snp", 0.9)
    with pytest.raises(ValueError, match="did you mean 'learned'"):
        A.PruneConfig("snip", budgets="learnd")
    with pytest.raises(ValueError, match=r"unknown criterion 'zzz'; known criteria"):
        A.PruneConfig("zzz")
