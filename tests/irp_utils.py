"""Shared helpers of the IRP tests: a tiny task, tiny models, TrainingArguments and recording callbacks."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from autosparse_hf import IRPCallback, IRPConfig, MaskEnforcer
from autosparse_hf.tasks import build_model, compute_metrics_for_classification, load_task

BATCH = 32
TRAIN_ROWS = 256  # 8 optimizer steps per epoch
STEPS_PER_EPOCH = TRAIN_ROWS // BATCH
TEST_ROWS = 200




@functools.lru_cache(maxsize=1)
def _digits() -> DatasetDict:
    task = load_task("digits", seed=0)
    return DatasetDict({"train": task["train"].select(range(TRAIN_ROWS)), "test": task["test"].select(range(TEST_ROWS))})


def digits() -> DatasetDict:
    return _digits()


def lenet(seed: int = 0) -> nn.Module:
    """LeNet-300-100 on 8x8 digits: 64*300 + 300*100 + 100*10 = 50,200 prunable weights."""
    return build_model("lenet300100", "digits", seed=seed)


class TinyBNNet(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Linear, so that rewinding must restore running statistics too."""

    example_input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.bn = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.fc2(torch.relu(self.bn(self.fc1(pixel_values.flatten(1)))))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def tiny_bn_net(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyBNNet()


def training_args(output_dir: str | Path, **overrides: Any) -> TrainingArguments:
    """SGD with momentum and weight decay, a non-constant schedule, a fixed data order, a log line per step."""
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=1,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=256,
        learning_rate=0.05,
        optim="sgd",
        optim_args="momentum=0.9",
        weight_decay=5e-4,
        lr_scheduler_type="linear",
        seed=0,
        data_seed=0,
        train_sampling_strategy="sequential",
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        average_tokens_across_devices=False,
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def make_trainer(
    model: nn.Module, args: TrainingArguments, callbacks: Sequence[TrainerCallback], eval_dataset: bool = True
) -> Trainer:
    data = digits()
    return Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"] if eval_dataset else None,
        compute_metrics=compute_metrics_for_classification,
        callbacks=list(callbacks),
    )


def run_irp(
    output_dir: str | Path,
    config: IRPConfig,
    *,
    epochs_per_cycle: int = 1,
    model: nn.Module | None = None,
    before: Sequence[TrainerCallback] = (),
    after: Sequence[TrainerCallback] = (),
    irp_kwargs: dict[str, Any] | None = None,
    resume_from_checkpoint: str | None = None,
    **arg_overrides: Any,
) -> tuple[Trainer, IRPCallback]:
    """Train with an ``IRPCallback``; ``before`` callbacks see every event before the IRP callback acts."""
    irp = IRPCallback(config, **{"model_name": "lenet300100", "task_name": "digits", **(irp_kwargs or {})})
    if "max_steps" not in arg_overrides:
        arg_overrides.setdefault("num_train_epochs", config.training_cycles * epochs_per_cycle)
    args = training_args(output_dir, **arg_overrides)
    trainer = make_trainer(model if model is not None else lenet(), args, [*before, irp, *after])
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer, irp


class EnforceMask(TrainerCallback):
    """Keep a fixed mask enforced (what a fresh one-cycle run of a ticket does)."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self.enforcer: MaskEnforcer | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        self.enforcer = MaskEnforcer(model, self.masks)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.enforcer.mask_gradients()

    def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.enforcer.zero_weights()


class StopAt(TrainerCallback):
    """Simulate a kill: stop training right after optimizer step ``step`` without saving anything."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step == self.step:
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False
        return control


def step_logs(trainer: Trainer) -> list[dict[str, float]]:
    """Per-step training log lines (``logging_steps=1``), in step order."""
    return [h for h in trainer.state.log_history if "loss" in h and "learning_rate" in h]


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str = "") -> None:
    assert sorted(a) == sorted(b), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs (max abs diff "\
            f"{(a[key].double() - b[key].double()).abs().max().item() if a[key].numel() else 0})"


def cycle_length(total_steps: int, training_cycles: int, rewind_step: int = 0) -> int:
    length = (total_steps + (training_cycles - 1) * rewind_step) / training_cycles
    assert length == math.floor(length)
    return int(length)
