"""Crash-safe IRP resume: a checkpoint counts only when its IRP state is complete; a changed run is refused.

Kill points are injected deterministically: in ``on_save`` before ``IRPCallback`` writes its state (the Trainer's
files exist, IRP's do not), and inside the state write itself (before ``state.json``, which is written last).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from irp_utils import lenet, run_irp
from kill_points import Killed, KillInOnSave
from transformers import TrainerCallback

from autosparse_hf import IRPConfig
from autosparse_hf.checkpoints import last_complete_checkpoint, remove_stale_temporaries
from autosparse_hf.irp import checkpoint as irp_checkpoint
from autosparse_hf.irp.checkpoint import CHECKPOINT_STATE_DIR, is_complete

CONFIG = IRPConfig(cycles=3, final_sparsity=0.9, feature_num_batches=2)
ARGS = dict(save_strategy="steps", save_steps=4, train_sampling_strategy="random", logging_steps=4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):  # noqa: ANN201
    _, ref = run_irp(tmp_path_factory.mktemp("ref"), CONFIG, irp_kwargs={"run_id": "fixed"}, **ARGS)
    return ref


def _resume_equals_reference(folder: Path, reference) -> None:  # noqa: ANN001
    checkpoint = last_complete_checkpoint(folder, is_complete, remove_incomplete=True)
    assert checkpoint is not None and checkpoint.name == "checkpoint-8"
    assert not (folder / "checkpoint-12").exists()  # the incomplete newer one was removed
    _, resumed = run_irp(folder, CONFIG, model=lenet(seed=99), resume_from_checkpoint=str(checkpoint), **ARGS)
    assert resumed.finished
    for key in ("cycle", "density", "step", "eval_loss", "eval_accuracy"):  # timings differ, results may not
        assert [h[key] for h in resumed.history] == [h[key] for h in reference.history], key
    assert all(torch.equal(resumed.cycle_pruned[n], reference.cycle_pruned[n]) for n in reference.cycle_pruned)


def test_kill_after_the_trainer_saved_but_before_irp_state(tmp_path, reference):
    with pytest.raises(Killed):
        run_irp(tmp_path, CONFIG, irp_kwargs={"run_id": "fixed"}, before=[KillInOnSave(12)], **ARGS)
    assert (tmp_path / "checkpoint-12").is_dir() and not is_complete(tmp_path / "checkpoint-12")
    with pytest.raises(FileNotFoundError, match="no complete IRP state.*newest complete checkpoint there is .*checkpoint-8"):
        run_irp(tmp_path, CONFIG, resume_from_checkpoint=str(tmp_path / "checkpoint-12"), **ARGS)
    _resume_equals_reference(tmp_path, reference)


def test_kill_inside_the_irp_state_write(tmp_path, reference, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):  # noqa: ANN001, ANN202
        if Path(dst).name == irp_checkpoint.STATE_FILE and "checkpoint-12" in str(dst):
            raise Killed("inside the state write")
        return real_replace(src, dst)

    monkeypatch.setattr(irp_checkpoint.os, "replace", replace)
    with pytest.raises(Killed):
        run_irp(tmp_path, CONFIG, irp_kwargs={"run_id": "fixed"}, **ARGS)
    monkeypatch.undo()
    state_dir = tmp_path / "checkpoint-12" / CHECKPOINT_STATE_DIR
    assert (state_dir / irp_checkpoint.TENSORS_FILE).is_file() and not is_complete(tmp_path / "checkpoint-12")
    _resume_equals_reference(tmp_path, reference)


def test_resume_with_another_seed_or_data_size_is_refused(tmp_path):
    with pytest.raises(Killed):
        run_irp(tmp_path, CONFIG, before=[KillInOnSave(12)], **ARGS)
    checkpoint = str(tmp_path / "checkpoint-8")
    with pytest.raises(ValueError, match="different run.*seed: 0 saved, 1 now"):
        run_irp(tmp_path, CONFIG, resume_from_checkpoint=checkpoint, **{**ARGS, "seed": 1})
    with pytest.raises(ValueError, match="different run.*per_device_train_batch_size"):
        run_irp(tmp_path, CONFIG, resume_from_checkpoint=checkpoint, **{**ARGS, "per_device_train_batch_size": 16})


def test_stale_temporary_folders_are_removed(tmp_path):
    (tmp_path / ".irp.tmp-abc123").mkdir()
    (tmp_path / ".irp_state.tmp-x").mkdir()
    (tmp_path / "irp").mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".irp.tmp-abc123", ".irp_state.tmp-x"]
    assert [p.name for p in tmp_path.iterdir()] == ["irp"]
    shutil.rmtree(tmp_path / "irp")


def test_log_lines_carry_the_cycle_they_belong_to(tmp_path):
    # The closing lines (after the last cycle ended) belong to the last cycle, not to one past it.
    class Logs(TrainerCallback):
        def __init__(self) -> None:
            self.lines = []

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
            self.lines.append(dict(logs or {}))

    logs = Logs()
    run_irp(tmp_path, CONFIG, after=[logs], logging_steps=4)
    cycles = [line["irp_cycle"] for line in logs.lines if "irp_cycle" in line]
    assert max(cycles) == CONFIG.training_cycles and cycles == sorted(cycles)
    assert any("train_runtime" in line and line["irp_cycle"] == CONFIG.training_cycles for line in logs.lines)
