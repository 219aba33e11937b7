"""A checkpoint's IRP state is validated when read: a non-finite rewind snapshot is refused, naming file and tensor."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from autosparse_hf import IRPConfig
from autosparse_hf.irp import checkpoint as irp_checkpoint
from autosparse_hf.irp.checkpoint import CHECKPOINT_STATE_DIR
from tests.irp_utils import run_irp

CONFIG = IRPConfig(cycles=2, final_sparsity=0.5, evaluate_cycles=False)


def test_a_nan_in_the_initial_weight_snapshot_is_refused_on_resume(tmp_path):
    run_irp(tmp_path, CONFIG, irp_kwargs={"run_id": "fixed"}, save_strategy="epoch", save_total_limit=None)
    tensors_file = tmp_path / "checkpoint-8" / CHECKPOINT_STATE_DIR / irp_checkpoint.TENSORS_FILE
    tensors = load_file(str(tensors_file))
    key = next(k for k in tensors if k.startswith("init/") and k.endswith("weight"))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[3] = float("nan")
    save_file(tensors, str(tensors_file))
    (tmp_path / "irp").rename(tmp_path / "irp-finished")  # the finished run's folder would be refused first
    with pytest.raises(ValueError, match=rf"tensors.safetensors: snapshot tensor '{key}' holds NaN or inf"):
        run_irp(tmp_path, CONFIG, resume_from_checkpoint=str(tmp_path / "checkpoint-8"), save_strategy="epoch")
    assert torch.isnan(load_file(str(tensors_file))[key]).any()  # refused, nothing rewritten
