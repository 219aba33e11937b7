"""Trainer callbacks that prune at initialization and keep the masks enforced to the end of training."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .criteria import Criterion
from .masks import MaskEnforcer, MaskSet, check_sparsity
from .pruning import Budget, prune_at_init

logger = logging.getLogger(__name__)

CHECKPOINT_MASK_DIR = "pai_masks"


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
            self.enforcer.zero_weights()

    def on_train_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if self.enforcer is not None:
            self.enforcer.remove()  # the hooks must not outlive training (the model may be fine-tuned densely later)


class PaICallback(MaskEnforcingCallback):
    """Prune at initialization when training begins, then keep pruned weights exactly zero.

    At ``on_train_begin`` the model is scored with ``criterion`` on batches of the Trainer's training dataloader (or
    ``dataloader``), pruned to ``sparsity`` and the masks broadcast from rank 0. Before every optimizer step the
    gradients of pruned weights are zeroed (momentum stays zero), after it the weights are re-zeroed (weight decay
    cannot move them). The achieved sparsity is added to the logs. Masks are saved into every checkpoint folder and
    reloaded on ``resume_from_checkpoint``. See AutoSparse (arXiv 2408.14757) for the setting.

    Args:
        criterion: Registered criterion name or instance.
        sparsity: Fraction of prunable weights to remove, in [0, 1).
        num_batches, scope, min_density, include, exclude, criterion_options, ticket_source, budgets: As in
            ``prune_at_init`` (``budgets="irp"`` with ``ticket_source`` reuses an IRP run's layer densities).
        dataloader: Data for the criterion; defaults to the Trainer's training dataloader.

    Example:
        ```python
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds["train"],
        ...                   callbacks=[PaICallback(criterion="snip", sparsity=0.9)])
        >>> trainer.train()
        ```
    """

    def __init__(
        self,
        criterion: str | Criterion = "snip",
        sparsity: float = 0.9,
        *,
        num_batches: int = 1,
        scope: Budget = "auto",
        min_density: float = 0.0,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        criterion_options: Mapping[str, Any] | None = None,
        dataloader: Iterable[Mapping[str, Any]] | None = None,
        ticket_source: Any = None,
        budgets: Budget | None = None,
    ) -> None:
        self.criterion = criterion
        self.sparsity = check_sparsity(sparsity)
        self.num_batches = num_batches
        self.scope = scope
        self.min_density = min_density
        self.include = include
        self.exclude = exclude
        self.criterion_options = dict(criterion_options or {})
        super().__init__()
        self.dataloader = dataloader
        self.ticket_source = ticket_source
        self.budgets = budgets
        self.masks: MaskSet | None = None

    def compute_masks(self, model: nn.Module, dataloader: Iterable[Mapping[str, Any]] | None) -> MaskSet:
        """Score, select and apply the masks (override to prune differently, as ``AutoSCallback`` does)."""
        return prune_at_init(
            model,
            self.criterion,
            self.sparsity,
            dataloader,
            num_batches=self.num_batches,
            scope=self.scope,
            min_density=self.min_density,
            include=self.include,
            exclude=self.exclude,
            criterion_options=self.criterion_options,
            ticket_source=self.ticket_source,
            budgets=self.budgets,
        )

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model: nn.Module = kwargs["model"]
        resumed = Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_MASK_DIR
        if state.global_step > 0 and resumed.is_dir():
            # Resuming: the masks were chosen at initialization, not on the trained weights now loaded.
            self.masks = MaskSet.from_pretrained(resumed)
            self.masks.apply(model)
        else:
            self.masks = self.compute_masks(model, self.dataloader or kwargs.get("train_dataloader"))
        self.enforce(model, self.masks)
        logger.info("pruned %s to sparsity %.6f", type(model).__name__, self.masks.sparsity)

    def on_log(self, args, state, control, logs: dict[str, float] | None = None, **kwargs) -> None:  # noqa: ANN001
        if logs is not None and self.masks is not None:
            value = round(self.masks.sparsity, 6)
            # Trainer.log appends a copy of ``logs`` to ``state.log_history`` before ``on_log``; the copy needs it too.
            entry = state.log_history[-1] if state.log_history else {}
            if entry.get("step") == state.global_step and set(logs) <= set(entry):
                entry["sparsity"] = value
            logs["sparsity"] = value

    def on_save(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if self.masks is not None and state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", CHECKPOINT_MASK_DIR)
            self.masks.save_pretrained(folder)


class AutoSCallback(PaICallback):
    """Prune with a trained AutoS predictor when training begins; keep the mask enforced to the end.

    At ``on_train_begin`` the features of every prunable weight are computed at initialization (``w0``, ``g0`` over
    the predictor's number of batches, layer context), the predictor scores them in bounded-memory chunks, the
    global top-k is kept and, under DDP, rank 0's mask is broadcast. AutoSparse: Liu et al. 2024, arXiv 2408.14757.

    Args:
        predictor: An ``AutoSModel``, a folder saved with ``save_pretrained``, or a Hub id.
        sparsity: Fraction of prunable weights to remove, in [0, 1).
        **kwargs: ``scope``, ``min_density``, ``include``, ``exclude``, ``dataloader`` as in ``PaICallback``.

    Example:
        ```python
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds["train"],
        ...                   callbacks=[AutoSCallback(predictor="outputs/autos", sparsity=0.95)])
        >>> trainer.train()
        ```
    """

    def __init__(self, predictor: Any, sparsity: float = 0.9, **kwargs: Any) -> None:
        from .criteria.autos import AutoSCriterion

        super().__init__(criterion=AutoSCriterion(predictor=predictor), sparsity=sparsity, **kwargs)
