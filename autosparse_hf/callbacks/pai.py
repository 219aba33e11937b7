"""``PaICallback`` and ``AutoSCallback``: prune when training begins, keep the mask enforced to the end."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerControl, TrainerState, TrainingArguments

from ..checkpoints import require_complete, resumed_checkpoint
from ..criteria import Criterion
from ..guards import warn_if_rotation_leaves_no_complete_checkpoint
from ..masks import MASK_CONFIG_NAME, MASK_WEIGHTS_NAME, MaskSet
from ..pruning import PruneConfig, budgets_option, make_prune_config, prune_with_config
from .enforcing import MaskEnforcingCallback

logger = logging.getLogger(__name__)

CHECKPOINT_MASK_DIR = "pai_masks"


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
        config: A ``PruneConfig`` instead of ``criterion``, ``sparsity`` and the options.
        dataloader: Data for the criterion; defaults to the Trainer's training dataloader.
        **options: ``PruneConfig`` fields, as in ``prune_at_init`` (``budgets``, ``num_batches``, ``min_density``,
            ``include``, ``exclude``, ``criterion_options``, ``budget_options``, ``predictor``, ``ticket_source``;
            ``budgets="ticket"`` with ``ticket_source`` reuses an IRP run's layer densities). Checked here, before
            any training.

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
        config: PruneConfig | None = None,
        dataloader: Iterable[Mapping[str, Any]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if config is None:
            # One validation path: prune_at_init's own, run on a config now instead of at on_train_begin.
            config = make_prune_config(criterion, sparsity, **options)
        elif options:
            raise TypeError("give either config=PruneConfig(...) or options, not both")
        self.config = config
        self.dataloader = dataloader
        self.masks: MaskSet | None = None
        self.pruning_seconds: float | None = None

    @property
    def criterion(self) -> str | Criterion:
        return self.config.criterion

    @property
    def sparsity(self) -> float:
        return self.config.sparsity

    def compute_masks(self, model: nn.Module, dataloader: Iterable[Mapping[str, Any]] | None) -> MaskSet:
        """Score, allocate, select and apply the masks (override to prune differently)."""
        return prune_with_config(model, self.config, dataloader)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model: nn.Module = kwargs["model"]
        warn_if_rotation_leaves_no_complete_checkpoint(args, type(self).__name__)
        checkpoint = resumed_checkpoint(args, state)
        if checkpoint is not None:
            # Resuming: the masks were chosen at initialization, not on the trained weights now loaded; they are read
            # from the folder the Trainer resumes from, and never re-scored.
            self.masks = self._load_masks(checkpoint)
            self.masks.apply(model)
            logger.info("resumed the masks of %s", checkpoint / CHECKPOINT_MASK_DIR)
        else:
            start = time.perf_counter()
            with _progress_bars(enabled=not args.disable_tqdm):
                self.masks = self.compute_masks(model, self.dataloader or kwargs.get("train_dataloader"))
            # The Trainer's train_runtime includes this; the logs report it apart so training time can be told.
            self.pruning_seconds = time.perf_counter() - start
        self.enforce(model, self.masks)
        logger.info("pruned %s to sparsity %.6f", type(model).__name__, self.masks.sparsity)

    def _load_masks(self, checkpoint: Path) -> MaskSet:
        require_complete(
            checkpoint,
            masks_complete,
            f"{CHECKPOINT_MASK_DIR}/ (written without {type(self).__name__}, or killed while saving); re-pruning the "
            "trained weights would choose another mask",
        )
        masks = MaskSet.from_pretrained(checkpoint / CHECKPOINT_MASK_DIR)
        expected = {"sparsity": self.config.sparsity, "criterion": _criterion_name(self.config.criterion)}
        saved = {k: masks.metadata.get(k) for k in expected}
        differ = {k: (saved[k], v) for k, v in expected.items() if saved[k] is not None and saved[k] != v}
        if differ:
            listing = ", ".join(f"{k}: {a!r} saved, {b!r} now" for k, (a, b) in differ.items())
            raise ValueError(f"the masks in {checkpoint} were made differently ({listing}); resume with the same pruning")
        return masks

    def on_log(self, args, state, control, logs: dict[str, float] | None = None, **kwargs) -> None:  # noqa: ANN001
        if logs is not None and self.masks is not None:
            # Counted in the model, not read from the mask: what is logged is what the network really is.
            value = round(_zero_share(kwargs.get("model"), self.masks), 6)
            # Trainer.log appends a copy of ``logs`` to ``state.log_history`` before ``on_log``; the copy needs it too.
            entry = state.log_history[-1] if state.log_history else {}
            extra = {"sparsity": value}
            if "train_runtime" in logs and self.pruning_seconds is not None:
                extra["pruning_runtime"] = round(self.pruning_seconds, 4)
            if entry.get("step") == state.global_step and set(logs) <= set(entry):
                entry.update(extra)
            logs.update(extra)

    def on_save(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if self.masks is not None and state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", CHECKPOINT_MASK_DIR)
            self.masks.save_pretrained(folder)


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Scoring bars follow ``TrainingArguments.disable_tqdm``: with it, transformers' progress-bar switch (which the
    criteria's ``progress=None`` follows) is off while pruning, and restored after. An explicit ``progress=True``
    criterion option still shows its bar."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled and was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not enabled and was:
            hf_logging.enable_progress_bar()


def _zero_share(model: nn.Module | None, masks: MaskSet) -> float:
    """Share of exact zeros in the masked tensors of ``model`` (the mask's own sparsity without a model)."""
    if model is None:
        return masks.sparsity
    params = dict(model.named_parameters())
    zeros = sum(int((params[name].detach() == 0).sum()) for name in masks if name in params)
    return zeros / masks.numel if masks.numel else 0.0


def masks_complete(checkpoint: Path) -> bool:
    """Whether a Trainer checkpoint holds a complete saved mask (both of its files)."""
    folder = Path(checkpoint) / CHECKPOINT_MASK_DIR
    return (folder / MASK_CONFIG_NAME).is_file() and (folder / MASK_WEIGHTS_NAME).is_file()


def _criterion_name(criterion: str | Criterion) -> str:
    return criterion if isinstance(criterion, str) else criterion.name


class AutoSCallback(PaICallback):
    """Prune with a trained AutoS predictor when training begins; keep the mask enforced to the end.

    Follows the recipe the predictor was trained for (``PruneConfig.from_predictor``): its learned layer budgets
    (when it has a budget model) with the ranking its config names inside them: iterative SynFlow (the measured
    default), SNIP on the predictor's gradient batches, or the predictor's own scores of the per-weight features at
    initialization (``w0``, ``g0``, layer context). Under DDP rank 0's mask is broadcast. AutoSparse: Liu et al. 2024,
    arXiv 2408.14757.

    Args:
        predictor: An ``AutoSModel``, a folder saved with ``save_pretrained``, or a Hub id.
        sparsity: Fraction of prunable weights to remove, in [0, 1).
        **options: ``PruneConfig`` fields overriding the predictor's recipe (``criterion``, ``budgets``,
            ``min_density``, ``include``, ``exclude``, ...), and ``dataloader``.

    Example:
        ```python
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds["train"],
        ...                   callbacks=[AutoSCallback(predictor="outputs/autos", sparsity=0.95)])
        >>> trainer.train()
        ```
    """

    def __init__(self, predictor: Any, sparsity: float = 0.9, **options: Any) -> None:
        dataloader = options.pop("dataloader", None)
        options = budgets_option(options, options.pop("scope", None))
        super().__init__(config=PruneConfig.from_predictor(predictor, sparsity=sparsity, **options), dataloader=dataloader)

