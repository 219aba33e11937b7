"""Run ``recipes/irp.py`` unchanged, recording per rank what a multi-process run must agree on.

    IRP_PROBE_DIR=/tmp/probe accelerate launch --multi_gpu --num_processes 2 tests/irp_ddp_probe.py \
        --config recipes/configs/irp_tiny.yaml --output_dir /tmp/out

Each rank writes ``rank{r}.json`` into ``$IRP_PROBE_DIR``: the sha256 of its final masks and of its mask after every
cycle, the world size, and how often it wrote the run folder (``save_run``) and IRP checkpoint state. Used by
tests/test_irp_recipe.py; the recipe itself stays free of test hooks.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import sys
from pathlib import Path

import torch.distributed as dist

from autosparse_hf.irp import IRPCallback
from autosparse_hf.irp import callback as irp_callback_module

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "irp.py"
calls = {"save_run": 0, "checkpoint_state": 0}


def masks_sha256(masks) -> str:  # noqa: ANN001
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


original_save_run = IRPCallback.save_run
original_save_state = irp_callback_module.save_training_state
original_train_end = IRPCallback.on_train_end


def save_run(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    calls["save_run"] += 1
    return original_save_run(self, *args, **kwargs)


def save_state(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201
    calls["checkpoint_state"] += 1
    return original_save_state(*args, **kwargs)


def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
    result = original_train_end(self, args, state, control, **kwargs)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    record = {
        "rank": rank,
        "world_size": world,
        "finished": self.finished,
        "final_mask_sha256": masks_sha256(self.masks),
        "cycle_masks_sha256": [masks_sha256(self.mask_after(c)) for c in range(self.config.cycles + 1)],
        "kept": [self.mask_after(c).num_kept for c in range(self.config.cycles + 1)],
        "g0_sha256": masks_sha256(self.features.gradients),
        # Ranks must see different data shards, or identical masks would prove nothing about the broadcast.
        "first_batch_sha256": masks_sha256(next(iter(kwargs["train_dataloader"]))),
        **calls,
    }
    folder = Path(os.environ["IRP_PROBE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{rank}.json").write_text(json.dumps(record, indent=2))
    return result


IRPCallback.save_run = save_run
irp_callback_module.save_training_state = save_state
IRPCallback.on_train_end = on_train_end

if __name__ == "__main__":
    sys.argv = [str(RECIPE), *sys.argv[1:]]
    runpy.run_path(str(RECIPE), run_name="__main__")  # the recipe ends with destroy_process_group()
