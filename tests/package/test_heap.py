"""The C heap helpers: free memory handed back during backward without touching a gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autosparse_hf import heap


def _mlp_loss(seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    loss = nn.functional.cross_entropy(net(torch.randn(5, 8)), torch.tensor([0, 1, 2, 0, 1]))
    return loss, list(net.parameters())


def _count_nodes(root: torch.Tensor, accumulate: bool) -> int:
    """Nodes of the graph behind ``root``: those a backward runs (``torch.autograd.grad`` runs no AccumulateGrad)."""
    seen, pending = set(), [root.grad_fn]
    while pending:
        node = pending.pop()
        if node is not None and node not in seen:
            seen.add(node)
            pending.extend(child for child, _ in node.next_functions)
    return sum(accumulate or "AccumulateGrad" not in node.name() for node in seen)


def test_release_free_memory_is_safe_to_call_anywhere():
    # malloc_trim where glibc has it, nothing elsewhere; never an error, and no tensor is touched.
    weights = torch.randn(100)
    before = weights.clone()
    assert heap.release_free_memory() is None
    heap.release_free_memory()
    assert torch.equal(weights, before)


@pytest.mark.skipif(heap._malloc_trim() is None, reason="no malloc_trim in this C library")
@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("backward", ["grad", "backward"])
def test_trims_every_n_nodes_during_backward_and_gradients_are_unchanged(monkeypatch, every, backward):
    loss, params = _mlp_loss()
    expected = torch.autograd.grad(loss, params, retain_graph=True)
    calls = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: calls.append(1))
    nodes = _count_nodes(loss, accumulate=backward == "backward")
    with heap.releasing_during_backward(loss, every=every):
        if backward == "grad":
            got = torch.autograd.grad(loss, params, retain_graph=True)
        else:
            loss.backward(retain_graph=True)
            got = [p.grad for p in params]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    # Every node the backward runs is counted once: one trim per `every` of them.
    assert len(calls) == nodes // every > 0
    # The hooks are gone after the block: another backward through the same graph trims nothing.
    torch.autograd.grad(loss, params)
    assert len(calls) == nodes // every


@pytest.mark.skipif(heap._malloc_trim() is None, reason="no malloc_trim in this C library")
def test_double_backward_through_the_hooked_graph_is_unchanged(monkeypatch):
    # GraSP's pattern: a first-order graph (create_graph), then a backward through it, trimmed as it runs.
    def hessian_vector(trim: bool) -> list[torch.Tensor]:
        loss, params = _mlp_loss(seed=1)
        first = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * g.detach()).sum() for g in first)
        if not trim:
            return list(torch.autograd.grad(dot, params))
        with heap.releasing_during_backward(dot, every=1):
            return list(torch.autograd.grad(dot, params))

    calls = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: calls.append(1))
    assert all(torch.equal(a, b) for a, b in zip(hessian_vector(True), hessian_vector(False), strict=True))
    assert calls


def test_no_hooks_without_malloc_trim_or_graph(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: calls.append(1))
    loss, params = _mlp_loss()
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)  # another C library
    with heap.releasing_during_backward(loss):
        torch.autograd.grad(loss, params, retain_graph=True)
    with heap.releasing_during_backward(torch.ones(3)):  # no graph behind it: nothing to hook
        pass
    assert calls == []


def test_every_must_be_positive():
    loss, _ = _mlp_loss()
    with pytest.raises(ValueError, match="every must be >= 1, got 0"), heap.releasing_during_backward(loss, every=0):
        pass
