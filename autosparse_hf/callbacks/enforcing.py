"""The base of every pruning callback: keep a mask in force through the Trainer's optimizer steps."""

from __future__ import annotations

from torch import nn
from transformers import TrainerCallback

from ..masks import MaskEnforcer, MaskSet


class MaskEnforcingCallback(TrainerCallback):
    """Base of the pruning callbacks: holds one ``MaskEnforcer`` and keeps its mask in force every step.

    Gradients of pruned weights are masked during backward (hooks) and, after every optimizer step, pruned weights
    are re-zeroed; :meth:`enforce` swaps the mask (IRP does each cycle) and the hooks end with training.
    """

    def __init__(self) -> None:
        self.enforcer: MaskEnforcer | None = None

    def enforce(self, model: nn.Module, masks: MaskSet) -> None:
        """Put ``masks`` in force on ``model`` from now on (replacing any previous mask's hooks)."""
        if self.enforcer is not None:
            self.enforcer.remove()
        self.enforcer = MaskEnforcer(model, masks)

    def on_pre_optimizer_step(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if self.enforcer is not None:
            self.enforcer.mask_gradients()

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if self.enforcer is not None:
            # With the optimizer the enforcer can prove the multiply changes nothing (SGD, Adam, AdamW with zero
            # state at pruned positions and masked gradients) and skip it; any other optimizer gets the multiply.
            self.enforcer.zero_weights(kwargs.get("optimizer"))

    def on_train_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if self.enforcer is not None:
            self.enforcer.remove()  # the hooks must not outlive training (the model may be fine-tuned densely later)
