"""Deterministic kill points for the resume tests: a callback that stops a run inside ``on_save``."""

from __future__ import annotations

from transformers import TrainerCallback


class Killed(Exception):
    """Stands for the process dying at a chosen point."""


class KillInOnSave(TrainerCallback):
    """Stops the run in ``on_save`` at ``step``: the Trainer's files exist, later callbacks' files do not."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step == self.step:
            raise Killed(f"killed after the Trainer saved checkpoint-{self.step}")
