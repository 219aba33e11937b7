"""Mask enforcement under DDP (two gloo processes): where the gradient masking falls against the all-reduce.

``MaskEnforcer`` masks a gradient in a post-accumulate-grad hook. DDP's C++ reducer copies a gradient into its bucket
from a hook on the same accumulation, which autograd runs after the tensor's own post-accumulate-grad hooks, whichever
was registered first; so the buckets, which the communication hook all-reduces, already hold masked gradients. Either order would be correct (every
rank holds the same mask, and masking commutes with averaging) and costs the same (one multiply of each gradient; the
buckets are all-reduced dense either way): this pins down the order the enforcer documents, and that the result is
exact: every rank ends with the average of the ranks' masked gradients, zero at every pruned weight.
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
from tests.masks.test_enforce import _masks, _model  # the same seeded two-layer model and weight masks


def _batch(rank: int) -> torch.Tensor:
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(100 + rank))  # a different shard per rank


def _rank(rank: int, world: int, folder: str, enforcer_first: bool) -> None:
    # A file store for the rendezvous (no port to collide with the suite's other processes), and a timeout, so that a
    # failing rank cannot leave the other waiting for gloo's default half hour.
    store = Path(folder, "store").as_uri()
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        model = _model()
        masks = _masks(model)
        # PaICallback and IRPCallback build their enforcer at on_train_begin, after the Trainer wrapped the model.
        enforcer = MaskEnforcer(model, masks) if enforcer_first else None
        ddp = nn.parallel.DistributedDataParallel(model)
        if enforcer is None:
            enforcer = MaskEnforcer(model, masks)
        names = {id(p): n for n, p in model.named_parameters()}
        seen: dict[str, bool] = {}

        def inspect_then_allreduce(state, bucket):  # noqa: ANN001, ANN202
            # What the all-reduce is about to sum: is every pruned weight's gradient already zero in the bucket?
            for param, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
                name = names[id(param)]
                if name in masks:
                    seen[name] = bool((grad.reshape(masks[name].shape)[~masks[name]] == 0).all())
            buffer = bucket.buffer().div_(dist.get_world_size())
            return dist.all_reduce(buffer, async_op=True).get_future().then(lambda f: f.value()[0])

        ddp.register_comm_hook(None, inspect_then_allreduce)
        ddp(_batch(rank)).pow(2).sum().backward()
        # The reference: this rank's own masked gradient, without DDP, averaged over the ranks by hand.
        reference = _model()
        reference(_batch(rank)).pow(2).sum().backward()
        expected, local = {}, {}
        for n, p in reference.named_parameters():
            grad = p.grad * masks[n] if n in masks else p.grad
            local[n] = grad.clone()
            dist.all_reduce(grad)
            expected[n] = grad / world
        result = {
            "masked_in_bucket": seen,
            "pruned_grads_zero": {n: bool((p.grad[~masks[n]] == 0).all()) for n, p in model.named_parameters() if n in masks},
            "equals_average_of_masked": {
                n: bool(torch.allclose(p.grad, expected[n], rtol=1e-6, atol=1e-7)) for n, p in model.named_parameters()
            },
            # The shards differ, so the all-reduce changed the gradient (it is not this rank's own).
            "all_reduce_mattered": bool(not torch.allclose(local["0.weight"], expected["0.weight"])),
        }
        enforcer.remove()
        Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()  # neither rank tears its connections down while the other still uses them
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("enforcer_first", [False, True], ids=["enforcer-after-ddp", "enforcer-before-ddp"])
def test_gradients_reach_ddp_all_reduce_already_masked(tmp_path: Path, enforcer_first: bool) -> None:
    mp.spawn(_rank, args=(2, str(tmp_path), enforcer_first), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        # Both masked weight tensors went through the hook before the reducer bucketed them.
        assert result["masked_in_bucket"] == {"0.weight": True, "2.weight": True}
        assert all(result["pruned_grads_zero"].values())
        assert all(result["equals_average_of_masked"].values())
        assert result["all_reduce_mattered"]
