"""Resuming a pruned run: masks come from the folder the Trainer resumes from, wherever it is, or not at all.

Kills are injected deterministically: a callback placed before ``PaICallback`` raises in ``on_save`` at a chosen
step, after the Trainer wrote ``checkpoint-N`` and before the masks were saved (the window a real kill can hit).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from kill_points import Killed, KillInOnSave
from test_callbacks import SPARSITY, build_model, make_trainer

from autosparse_hf import MaskSet, PaICallback
from autosparse_hf.callbacks import CHECKPOINT_MASK_DIR


def train_with(callbacks, output_dir, model, **kwargs):  # noqa: ANN001, ANN201
    trainer, _ = make_trainer(model, callbacks[-1], output_dir, max_steps=10, save_steps=5)
    for callback in callbacks[:-1]:
        trainer.add_callback(callback)
        trainer.callback_handler.callbacks.remove(callback)
        trainer.callback_handler.callbacks.insert(0, callback)
    trainer.train(**kwargs)
    return trainer


def test_resume_from_a_moved_checkpoint_keeps_the_masks_bit_for_bit(tmp_path):
    first = PaICallback("snip", SPARSITY)
    train_with([first], tmp_path / "run", build_model())
    moved = tmp_path / "elsewhere" / "my-checkpoint"
    shutil.copytree(tmp_path / "run" / "checkpoint-5", moved)
    saved = MaskSet.from_pretrained(moved / CHECKPOINT_MASK_DIR)
    # The new run writes into another output_dir, which holds no checkpoint-5: only the moved folder has the masks.
    resumed = PaICallback("snip", SPARSITY)
    model = build_model(seed=3)
    train_with([resumed], tmp_path / "other-output", model, resume_from_checkpoint=str(moved))
    assert all(torch.equal(resumed.masks[n], saved[n]) for n in saved)
    params = dict(model.named_parameters())
    assert all(not params[n].detach()[~m].any() for n, m in saved.items())


def test_a_kill_before_the_masks_were_saved_is_refused_not_re_pruned(tmp_path):
    with pytest.raises(Killed):
        train_with([KillInOnSave(10), PaICallback("snip", SPARSITY)], tmp_path, build_model())
    assert (tmp_path / "checkpoint-10").is_dir() and not (tmp_path / "checkpoint-10" / CHECKPOINT_MASK_DIR).exists()
    resumed = PaICallback("snip", SPARSITY)
    with pytest.raises(FileNotFoundError, match="no complete pai_masks.*newest complete checkpoint there is .*checkpoint-5"):
        train_with([resumed], tmp_path, build_model(), resume_from_checkpoint=str(tmp_path / "checkpoint-10"))
    assert resumed.masks is None


def test_resume_with_other_pruning_settings_is_refused(tmp_path):
    train_with([PaICallback("snip", SPARSITY)], tmp_path, build_model())
    for other in (PaICallback("magnitude", SPARSITY), PaICallback("snip", 0.5)):
        with pytest.raises(ValueError, match="made differently"):
            train_with([other], tmp_path, build_model(), resume_from_checkpoint=str(tmp_path / "checkpoint-5"))
