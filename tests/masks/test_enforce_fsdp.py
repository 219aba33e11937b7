"""Mask enforcement on FSDP2-sharded parameters (``fully_shard``, two gloo processes on the CPU).

After ``fully_shard`` every parameter is a ``DTensor`` holding one shard of rows per rank. ``MaskEnforcer`` lays each
full mask out like its parameter (each rank keeps its shard of the mask), FSDP2 runs the post-accumulate-grad hooks
on the sharded gradients after its reduce-scatter, and ``zero_weights`` multiplies the sharded weights.

Checked for AdamW and SGD with momentum and weight decay (element-wise: ``zero_weights`` stops multiplying once the
optimizer state is settled, relying on the hooks) and an SGD subclass (not assumed element-wise: the sharded weights
are multiplied every step): the gradients of pruned weights are zero before the optimizer reads them, pruned weights
stay exactly zero, and the sharded run ends where one process ends that trains the unsharded model on both ranks'
batches (the loss averaged over the ranks, as FSDP's gradient averaging does). Row counts that do not divide by the
number of ranks give the ranks shards of different sizes. A weight sharded by columns (as tensor parallelism shards)
and a replicated one are masked exactly too (the hooks' timing is FSDP2's, checked for FSDP2 only). Scoring the
sharded model is refused with a message that says what to do (score the full model first).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from autosparse_hf import MaskEnforcer

pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch.distributed")

STEPS = 4


def _model() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A seeded MLP with 33 and 5 rows (uneven shards on two ranks), pruned 70% at random in its weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 33), nn.ReLU(), nn.Linear(33, 5))
    masks = {n: torch.rand_like(p) > 0.7 for n, p in model.named_parameters() if p.dim() == 2}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    return model, masks


def _batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)  # a different batch per rank and step
    return torch.randn(8, 16, generator=g), torch.randint(0, 5, (8,), generator=g)


class _OwnSGD(torch.optim.SGD):
    """An SGD subclass: not assumed element-wise, so ``zero_weights`` multiplies the (sharded) weights every step."""


def _optimizer(name: str, params) -> torch.optim.Optimizer:  # noqa: ANN001
    if name == "adamw":
        return torch.optim.AdamW(params, lr=0.05, weight_decay=0.1)
    return {"sgd": torch.optim.SGD, "sgd_subclass": _OwnSGD}[name](params, lr=0.05, momentum=0.9, weight_decay=0.1)


def _other_layouts(world: int) -> list[bool]:
    """``zero_pruned_weights`` on a weight sharded by columns (``Shard(1)``, as tensor parallelism shards), by rows,
    and replicated: the full weight afterwards is exactly the weight times the mask."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from autosparse_hf.masks import zero_pruned_weights

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(7)
    weight, mask = torch.randn(6, 9, generator=g), torch.rand(6, 9, generator=g) > 0.5
    layer = nn.Linear(9, 6)
    exact = []
    for placements in ([Shard(1)], [Shard(0)], [Replicate()]):
        layer.weight = nn.Parameter(distribute_tensor(weight.clone(), mesh, placements))
        zero_pruned_weights(layer, {"weight": mask})
        exact.append(bool(torch.equal(layer.weight.full_tensor(), weight * mask)))
    return exact


OPTIMIZERS = ("adamw", "sgd", "sgd_subclass")


def _rank(rank: int, world: int, folder: str) -> None:
    store = Path(folder, "store").as_uri()  # a file store: no port to collide with the suite's other processes
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        results = {name: _train(rank, world, name) for name in OPTIMIZERS}
        results["other_layouts_exact"] = _other_layouts(world)
        results["scoring_refused"] = _scoring_refusal()
        Path(folder, f"rank{rank}.json").write_text(json.dumps(results))
        dist.barrier()  # neither rank tears its connections down while the other still uses them
    finally:
        dist.destroy_process_group()


def _scoring_refusal() -> str:
    """What scoring a sharded model says: it needs the full parameters (not a DTensor error from deep inside)."""
    from torch.distributed.fsdp import fully_shard

    from autosparse_hf import compute_scores

    model, _ = _model()
    fully_shard(model)
    try:
        compute_scores(model, "magnitude", sparsity=0.5)
    except ValueError as error:
        return str(error)
    return ""


def _train(rank: int, world: int, optimizer_name: str) -> dict:
    """Train the sharded model and the unsharded reference side by side; what the test asserts."""
    from torch.distributed.fsdp import fully_shard

    model, masks = _model()
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    enforcer = MaskEnforcer(model, masks)
    optimizer = _optimizer(optimizer_name, model.parameters())
    # The reference: the unsharded model in this process, on every rank's batch of each step.
    reference, _ = _model()
    reference_enforcer = MaskEnforcer(reference, masks)
    reference_optimizer = _optimizer(optimizer_name, reference.parameters())
    pruned_grads_zero = []
    for step in range(STEPS):
        x, y = _batch(step, rank)
        nn.functional.cross_entropy(model(x), y).backward()
        for n, p in model.named_parameters():
            if n in masks:  # what the optimizer is about to read (the full gradient, gathered to check it)
                pruned_grads_zero.append(bool((p.grad.full_tensor()[~masks[n]] == 0).all()))
        optimizer.step()
        enforcer.zero_weights(optimizer)
        optimizer.zero_grad()

        losses = [nn.functional.cross_entropy(reference(b[0]), b[1]) for b in (_batch(step, r) for r in range(world))]
        (sum(losses) / world).backward()
        reference_optimizer.step()
        reference_enforcer.zero_weights(reference_optimizer)
        reference_optimizer.zero_grad()
    full = {n: p.full_tensor() for n, p in model.named_parameters()}
    initial = _model()[0].state_dict()  # the weights before training (the same seeded build)
    expected = dict(reference.named_parameters())
    return {
        "sharded": all(type(p).__name__ == "DTensor" for p in model.parameters()),
        "uneven_shards": [tuple(model[0].weight.to_local().shape)[0], tuple(model[2].weight.to_local().shape)[0]],
        "pruned_grads_zero": pruned_grads_zero,
        "pruned_weights_zero": {n: bool((full[n][~m] == 0).all()) for n, m in masks.items()},
        "kept_weights_moved": {n: bool((full[n][m] != initial[n][m]).any()) for n, m in masks.items()},
        "skips_zero_weights": enforcer.skips_zero_weights,
        "equals_unsharded": {
            n: bool(torch.allclose(full[n], expected[n].detach(), rtol=1e-5, atol=1e-6)) for n in full
        },
    }


def test_masks_hold_on_fsdp2_sharded_parameters(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(2, str(tmp_path)), nprocs=2, join=True)  # one pair of processes for every optimizer
    by_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for optimizer_name in OPTIMIZERS:
        _check(optimizer_name, [by_rank[r][optimizer_name] for r in (0, 1)])
    for result in by_rank:
        assert result["other_layouts_exact"] == [True, True, True]
        assert "cannot score sharded parameters (0.weight, 2.weight" in result["scoring_refused"]
        assert "before sharding" in result["scoring_refused"]


def _check(optimizer_name: str, results: list[dict]) -> None:
    """The two ranks' results of one optimizer's run."""
    assert results[0]["uneven_shards"] != results[1]["uneven_shards"]  # 33 and 5 rows: 17 + 16, 3 + 2
    for result in results:
        assert result["sharded"], optimizer_name
        assert len(result["pruned_grads_zero"]) == 2 * STEPS and all(result["pruned_grads_zero"]), optimizer_name
        assert all(result["pruned_weights_zero"].values()), optimizer_name
        assert all(result["kept_weights_moved"].values()), optimizer_name
        assert all(result["equals_unsharded"].values()), (optimizer_name, result["equals_unsharded"])
    # AdamW and SGD are element-wise: once their state is settled the weight multiply is skipped and the hooks alone
    # hold the zeros; the subclass has its sharded weights multiplied every step.
    assert all(r["skips_zero_weights"] == (optimizer_name != "sgd_subclass") for r in results), optimizer_name
