"""``PaICallback`` under a real ``transformers.Trainer``: pruning at train begin, exact enforcement, logs, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from autosparse_hf import MaskSet, PaICallback, get_prunable_parameters, select_masks
from autosparse_hf.callbacks import CHECKPOINT_MASK_DIR

SPARSITY = 0.75




class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, pixel_values, labels=None):
        logits = self.fc2(torch.relu(self.fc1(pixel_values)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def tiny_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    return Dataset.from_dict({"pixel_values": x, "labels": y}).with_format("torch")


def make_trainer(model, callback, output_dir, *, max_steps=20, save_steps=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        logging_steps=5,
        use_cpu=True,
        report_to=[],
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=tiny_dataset(), callbacks=[callback], optimizers=(optimizer, None)
    )
    return trainer, optimizer


def build_model(seed: int = 0) -> TinyClassifier:
    torch.manual_seed(seed)
    return TinyClassifier()


@pytest.mark.parametrize("criterion", ["snip", "magnitude"])
def test_masks_stay_exactly_enforced_through_sgd_with_momentum_and_weight_decay(tmp_path, criterion):
    model = build_model()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    callback = PaICallback(criterion=criterion, sparsity=SPARSITY)
    trainer, optimizer = make_trainer(model, callback, tmp_path)
    trainer.train()

    masks = callback.masks
    prunable = get_prunable_parameters(model)
    assert list(masks) == list(prunable) == ["fc1.weight", "fc2.weight"]
    total = sum(p.param.numel() for p in prunable.values())
    assert masks.num_kept == round((1 - SPARSITY) * total)
    if criterion == "magnitude":
        # The masks were chosen at train begin, on the initial weights.
        expected = select_masks({n: initial[n].abs() for n in prunable}, SPARSITY)
        assert all(torch.equal(masks[n], expected[n]) for n in prunable)

    params = dict(model.named_parameters())
    zeros = 0
    for name, mask in masks.items():
        weight = params[name].detach()
        assert torch.equal(weight[~mask], torch.zeros(int((~mask).sum())))  # exactly 0.0, not merely small
        assert (weight[mask] != initial[name][mask]).all()  # every kept weight trained (weight decay alone moves it)
        zeros += int((weight == 0).sum())
        momentum = optimizer.state[params[name]]["momentum_buffer"]
        assert not (momentum * ~mask).any()
    assert zeros == total - masks.num_kept  # achieved sparsity is the target one
    assert not torch.equal(params["fc1.bias"], initial["fc1.bias"])  # biases are not masked

    logged = [entry["sparsity"] for entry in trainer.state.log_history if "sparsity" in entry]
    assert logged and all(value == pytest.approx(masks.sparsity, abs=1e-6) for value in logged)
    assert trainer.state.global_step == 20
    # Pruning time is reported apart from training time in the closing log line.
    final = trainer.state.log_history[-1]
    assert "train_runtime" in final and 0 < final["pruning_runtime"] <= final["train_runtime"]


def test_masks_are_saved_with_checkpoints_and_reloaded_on_resume(tmp_path):
    model = build_model()
    callback = PaICallback(criterion="snip", sparsity=SPARSITY)
    trainer, _ = make_trainer(model, callback, tmp_path, max_steps=10, save_steps=5)
    trainer.train()
    saved = MaskSet.from_pretrained(tmp_path / "checkpoint-5" / CHECKPOINT_MASK_DIR)
    assert all(torch.equal(saved[n], callback.masks[n]) for n in callback.masks)
    assert (tmp_path / "checkpoint-10" / CHECKPOINT_MASK_DIR).is_dir()

    # A fresh model (another initialization, whose SNIP masks would differ) resuming from step 5 gets the masks
    # chosen at initialization, not new ones.
    resumed_model = build_model(seed=1)
    resumed = PaICallback(criterion="snip", sparsity=SPARSITY)
    trainer, _ = make_trainer(resumed_model, resumed, tmp_path, max_steps=10, save_steps=5)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))
    assert all(torch.equal(resumed.masks[n], saved[n]) for n in saved)
    params = dict(resumed_model.named_parameters())
    for name, mask in saved.items():
        assert not params[name].detach()[~mask].any()


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_bad_sparsity_is_rejected_when_the_callback_is_made(sparsity):
    with pytest.raises(ValueError, match="sparsity") as info:
        PaICallback(criterion="magnitude", sparsity=sparsity)
    assert repr(sparsity) in str(info.value)


def test_logged_sparsity_counts_the_zeros_in_the_model(tmp_path):
    # fc2's weight is zero and frozen: the random mask keeps some of its zeros, so the network is sparser than the
    # mask says, and the log must say what the network is.
    model = build_model()
    with torch.no_grad():
        model.fc2.weight.zero_()
    model.fc2.weight.requires_grad_(False)
    callback = PaICallback(criterion="random", sparsity=0.5)
    trainer, _ = make_trainer(model, callback, tmp_path, max_steps=5)
    trainer.train()
    zeros = sum(int((p.detach() == 0).sum()) for n, p in model.named_parameters() if n in callback.masks)
    logged = trainer.state.log_history[-1]["sparsity"]
    assert logged == pytest.approx(zeros / callback.masks.numel, abs=1e-6) and logged > callback.masks.sparsity


@pytest.mark.parametrize("disable_tqdm", [True, False])
def test_scoring_bars_follow_the_trainers_disable_tqdm(tmp_path, capsys, monkeypatch, disable_tqdm):
    from transformers.utils import logging as hf_logging

    from autosparse_hf.criteria import progress

    monkeypatch.setattr(progress, "PROGRESS_DELAY_S", 0.0)  # as if scoring were long enough for a bar
    hf_logging.enable_progress_bar()
    callback = PaICallback("synflow", sparsity=0.5, criterion_options={"rounds": 3})
    trainer, _ = make_trainer(build_model(), callback, str(tmp_path), max_steps=1)
    trainer.args.disable_tqdm = disable_tqdm
    trainer.train()
    assert ("SynFlow rounds" in capsys.readouterr().err) is not disable_tqdm
    assert hf_logging.is_progress_bar_enabled()  # restored after pruning
