"""IRP cycle arithmetic and the cyclic learning-rate schedule, as pure functions (no Trainer)."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from autosparse_hf.irp.cycles import cycle_ends, cyclic_lambda, install_cyclic_schedule


def test_cycle_ends_rewinding_to_initialization_are_equal_lengths():
    assert cycle_ends(40, 4) == [10, 20, 30, 40]


def test_cycle_ends_with_late_rewinding_resume_at_k():
    # total = T + (n - 1)(T - k): T = 10, k = 2, n = 3 -> 10 + 2 * 8 = 26.
    assert cycle_ends(26, 3, rewind_step=2, max_steps=26) == [10, 18, 26]


def test_cycle_ends_name_the_setting_that_fixes_an_uneven_run():
    with pytest.raises(ValueError, match="num_train_epochs=9 is not a whole multiple of 4"):
        cycle_ends(72, 4, num_train_epochs=9)
    with pytest.raises(ValueError, match="max_steps=41 is not divisible.*use max_steps=44"):
        cycle_ends(41, 4, max_steps=41)
    with pytest.raises(ValueError, match="rewind_step=10 must be smaller than the cycle length"):
        cycle_ends(10, 4, rewind_step=10, max_steps=10)


def test_cyclic_lambda_replays_one_cycle():
    one_cycle = lambda step: 1.0 - step / 10  # noqa: E731
    cyclic = cyclic_lambda(one_cycle, [10, 20, 30], rewind_step=0)
    assert [cyclic(s) for s in (0, 9, 10, 19, 20, 29)] == [one_cycle(s) for s in (0, 9, 0, 9, 0, 9)]
    late = cyclic_lambda(one_cycle, [10, 18, 26], rewind_step=2)
    assert [late(s) for s in (10, 17, 18)] == [one_cycle(2), one_cycle(9), one_cycle(2)]


def test_install_cyclic_schedule_restarts_the_trainers_schedule(tmp_path):
    args = TrainingArguments(str(tmp_path), learning_rate=0.1, lr_scheduler_type="linear", report_to=[])
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    install_cyclic_schedule(args, optimizer, scheduler, [4, 8], rewind_step=0)
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.1, 0.075, 0.05, 0.025]) and lrs[4:] == pytest.approx(lrs[:4])
    with pytest.raises(ValueError, match="LambdaLR"):
        install_cyclic_schedule(args, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1), [4, 8], 0)
