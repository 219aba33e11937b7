"""Cycle arithmetic of IRP inside one ``Trainer.train()``: where cycles end, and the learning-rate schedule that
restarts every cycle. Pure functions, tested without a Trainer.

One run of ``n`` training cycles, rewinding to optimizer step ``k``, trains ``T + (n - 1)(T - k)`` steps for a cycle
length ``T``: the first cycle trains ``T`` steps, every later one resumes at step ``k`` (late rewinding,
arXiv 1912.05671) and trains ``T - k``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import get_scheduler


def cycle_ends(
    total_steps: int,
    training_cycles: int,
    rewind_step: int = 0,
    *,
    num_train_epochs: float = 0.0,
    max_steps: int = -1,
    pruning_cycles: int | None = None,
    final_ticket: bool = True,
) -> list[int]:
    """The optimizer step at which each training cycle ends.

    Args:
        total_steps: Optimizer steps of the whole run (``TrainerState.max_steps``).
        training_cycles: Cycles trained (pruning cycles, plus one for the final ticket when it is trained).
        rewind_step: Step the weights rewind to (0: initialization).
        num_train_epochs / max_steps: What the user set, to word the error and check whole epochs per cycle.
        pruning_cycles / final_ticket: Only for the error message.

    Raises:
        ValueError: the run does not divide into equal cycles (with the setting that fixes it), or ``rewind_step`` is
            not inside the first cycle.
    """
    n, k = training_cycles, rewind_step
    # Counted in epochs (and rewinding to step 0), every cycle must also be a whole number of epochs: 9 epochs of 8
    # steps divide into 4 cycles of 18 steps, but cycles that end mid-epoch are not what "num_train_epochs = cycles x
    # epochs per cycle" asked for.
    epochs_per_cycle = float(num_train_epochs) / n
    whole_epochs = max_steps > 0 or k > 0 or epochs_per_cycle == int(epochs_per_cycle)
    if (total_steps + (n - 1) * k) % n != 0 or not whole_epochs:
        t = math.ceil((total_steps + (n - 1) * k) / n)
        good = t + (n - 1) * (t - k)
        if max_steps > 0:
            what = f"max_steps={max_steps} is not divisible into them"
        elif not whole_epochs:
            what = f"num_train_epochs={num_train_epochs} is not a whole multiple of {n}"
        else:
            what = f"num_train_epochs={num_train_epochs} gives {total_steps} optimizer steps, not divisible into them"
        hint = (
            f"use num_train_epochs = {n} x (epochs per cycle), e.g. {n * max(1, round(num_train_epochs / n))}"
            if max_steps <= 0 and k == 0
            else f"use max_steps={good}"
        )
        cycles = pruning_cycles if pruning_cycles is not None else n
        raise ValueError(
            f"IRP needs {n} training cycles of equal length ({cycles} cycles"
            f"{' + the final ticket' if final_ticket else ''}), but {what}; {hint}."
        )
    length = (total_steps + (n - 1) * k) // n
    if k >= length:
        raise ValueError(f"rewind_step={k} must be smaller than the cycle length ({length} optimizer steps)")
    return [length + (c - 1) * (length - k) for c in range(1, n + 1)]


def cyclic_lambda(one_cycle: Callable[[int], float], ends: Sequence[int], rewind_step: int) -> Callable[[int], float]:
    """A LambdaLR factor that replays ``one_cycle`` every cycle: step ``s`` of cycle ``c >= 2`` uses position
    ``rewind_step + (s - end_{c-1})``."""
    ends = list(ends)

    def cyclic(step: int) -> float:
        position = step
        for end in ends[:-1]:
            if step >= end:
                position = rewind_step + (step - end)
        return one_cycle(position)

    return cyclic


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside an accelerate wrapper (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def unwrap_scheduler(scheduler: Any) -> Any:
    """The torch scheduler inside an accelerate wrapper (or the scheduler itself)."""
    return getattr(scheduler, "scheduler", scheduler)


def install_cyclic_schedule(args: Any, optimizer: Any, lr_scheduler: Any, ends: Sequence[int], rewind_step: int) -> None:
    """Make the Trainer's LambdaLR schedule restart every cycle (the schedule of one cycle, ``ends[0]`` steps long,
    built from ``args`` as the Trainer would), and set the learning rates of the current step."""
    scheduler = unwrap_scheduler(lr_scheduler)
    if not hasattr(scheduler, "lr_lambdas"):
        raise ValueError(
            f"IRPCallback needs a LambdaLR schedule (any transformers lr_scheduler_type except "
            f"reduce_lr_on_plateau); got {type(scheduler).__name__}"
        )
    length = ends[0]
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    one_cycle = get_scheduler(
        args.lr_scheduler_type,
        dummy,
        num_warmup_steps=args.get_warmup_steps(length),
        num_training_steps=length,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs or {},
    )
    cyclic = cyclic_lambda(one_cycle.lr_lambdas[0], ends, rewind_step)
    scheduler.lr_lambdas = [cyclic for _ in scheduler.lr_lambdas]
    reset_learning_rates(optimizer, lr_scheduler)


def reset_learning_rates(optimizer: Any, lr_scheduler: Any) -> None:
    """Set every param group's learning rate to what the schedule says at its current step."""
    scheduler = unwrap_scheduler(lr_scheduler)
    groups = unwrap_optimizer(optimizer).param_groups
    for group, base_lr, fn in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base_lr * fn(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in groups]
