"""``IRPCallback``: iterative rewind pruning inside one ``Trainer.train()`` call.

The callback holds only the Trainer hooks; the cycle arithmetic and the cyclic learning-rate schedule are pure
functions (``irp.cycles``), the state it keeps across a resume lives in ``irp.checkpoint``, and the run it records is an
``IRPRecord`` (``autosparse_hf.records``), which writes the run folder.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import TrainerControl, TrainerState, TrainingArguments

from ..callbacks.enforcing import MaskEnforcingCallback
from ..checkpoints import require_complete, resumed_checkpoint
from ..criteria import compute_scores
from ..families import PrunableParameter, get_prunable_parameters
from ..features import InitialFeatures, compute_initial_features
from ..guards import warn_if_not_at_initialization, warn_if_rotation_leaves_no_complete_checkpoint
from ..masks import MaskSet, broadcast_masks, select_masks, zero_pruned_weights
from ..records import RUN_DIR, RUN_FILE, IRPRecord, read_run_info
from ..state import restore_state, snapshot_state
from .checkpoint import (
    CHECKPOINT_STATE_DIR,
    IRPTrainingState,
    check_same_run,
    is_complete,
    load_training_state,
    run_fingerprint,
    save_training_state,
    share_initial_weights,
)
from .config import IRPConfig
from .cycles import cycle_ends, install_cyclic_schedule, reset_learning_rates, unwrap_optimizer
from .schedule import kept_counts

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_STATE_DIR", "RUN_DIR", "RUN_FILE", "IRPCallback"]


class IRPCallback(MaskEnforcingCallback):
    r"""Iterative rewind pruning (lottery tickets) as a Trainer callback, recording every weight's survival.

    Add it to any ``Trainer`` and call ``trainer.train()`` once; the Trainer's length must be the number of
    training cycles (``cycles``, plus one for the final ticket) times the cycle length. At the end of every cycle the
    trained ticket is evaluated on the eval set (the lottery-ticket accuracy-versus-density curve), the trained
    weights are scored with ``config.criterion``, the next share is removed (never reviving a weight) and the
    **whole** training state is rewound: all parameters and buffers, the optimizer state and the learning-rate
    schedule, so each cycle trains exactly like a fresh one-cycle run from the masked, rewound weights.

    The surviving score of a weight is ``(c - 1) / E`` when it is pruned after cycle ``c`` of ``E`` and 1 when it
    survives all cycles (AutoSparse, arXiv 2408.14757); ``cycle_pruned`` stores ``c`` (``E + 1`` for survivors)
    losslessly, so the mask after cycle ``c`` is ``cycle_pruned > c``.

    Args:
        config: The IRP configuration (an ``IRPConfig``); keyword overrides may be given instead or on top.
        model_name / task_name / seed / run_id: Identity of the run, stored with the scores.

    Example:
        ```python
        >>> irp = IRPCallback(IRPConfig(cycles=20, final_sparsity=0.99), model_name="lenet300100", task_name="mnist")
        >>> args = TrainingArguments("out", num_train_epochs=21 * 3, eval_strategy="no", ...)  # 20 cycles + final
        >>> Trainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["test"],
        ...         callbacks=[irp]).train()
        >>> scores = irp.to_dataset()
        ```
    """

    def __init__(
        self,
        config: IRPConfig | None = None,
        *,
        model_name: str = "",
        task_name: str = "",
        seed: int | None = None,
        run_id: str | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        base = asdict(config) if config is not None else {}
        base.update(overrides)
        self.config = IRPConfig(**base)
        self.identity: dict[str, Any] = {"model": model_name, "task": task_name, "seed": seed, "run_id": run_id}
        self.params: dict[str, PrunableParameter] | None = None
        self.record: IRPRecord | None = None
        self.cycle = 1  # the training cycle in progress, 1-based
        self.cycle_ends: list[int] = []
        self.init_snapshot: dict[str, torch.Tensor] = {}
        self.rewind_snapshot: dict[str, torch.Tensor] | None = None
        self._pending_end = False
        self._run: dict[str, Any] | None = None
        self._overhead_seconds = 0.0
        self._start_time = 0.0

    # ----------------------------------------------------------------------------------------------------------
    # The record, and views of it
    @property
    def history(self) -> list[dict[str, Any]]:
        """One entry per trained ticket (cycle, density, sparsity, step, eval metrics)."""
        return self.record.history if self.record is not None else []

    @property
    def counts(self) -> list[int]:
        """Weights kept after each cycle, ``[N, k_1, ..., k_E]``."""
        return self.record.counts if self.record is not None else []

    @property
    def cycle_pruned(self) -> dict[str, torch.Tensor]:
        return self.record.cycle_pruned if self.record is not None else {}

    @property
    def features(self) -> InitialFeatures | None:
        return self.record.features if self.record is not None else None

    @property
    def finished(self) -> bool:
        return self.record is not None and self.record.finished

    @property
    def total(self) -> int:
        return sum(t.numel() for t in self.cycle_pruned.values())

    def pruned_cycles_done(self) -> int:
        """Pruning steps already applied (the current mask is the one after this many cycles)."""
        return min(self.cycle - 1, self.config.cycles)

    def mask_after(self, cycle: int) -> MaskSet:
        """The IRP mask after ``cycle`` pruning cycles (0 = dense); masks are nested, so this is lossless."""
        if self.record is None:
            raise RuntimeError("IRP has not started; train first")
        return self.record.mask_after(cycle)

    @property
    def masks(self) -> MaskSet:
        """The mask in force now."""
        return self.mask_after(self.pruned_cycles_done())

    def density_of(self, cycle: int) -> float:
        return self.counts[cycle] / self.counts[0]

    def run_info(self) -> dict[str, Any]:
        """JSON-ready description of the run: configuration, identity, schedule and per-cycle results."""
        if self.record is None:
            raise RuntimeError("IRP has not started; train first")
        return self.record.run_info()

    def to_dataset(self):  # noqa: ANN201  (datasets.Dataset)
        """The surviving-score ``datasets.Dataset`` of this run: one row per prunable weight."""
        if self.record is None or not self.record.finished:
            raise RuntimeError("the IRP run has not finished; train first")
        return self.record.to_dataset()

    def save_run(self, folder: Path, wall_seconds: float | None = None) -> None:
        """Write the run folder (``IRPRecord.save_pretrained``)."""
        if self.record is None:
            raise RuntimeError("IRP has not started; train first")
        self.record.timings = {"wall_seconds": wall_seconds, "callback_overhead_seconds": self._overhead_seconds}
        self.record.save_pretrained(folder)

    # ----------------------------------------------------------------------------------------------------------
    # Trainer events
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        start = time.perf_counter()
        self._start_time = time.time()
        model: nn.Module = kwargs["model"]
        self.cycle_ends = cycle_ends(
            state.max_steps,
            self.config.training_cycles,
            self.config.rewind_step,
            num_train_epochs=args.num_train_epochs,
            max_steps=args.max_steps,
            pruning_cycles=self.config.cycles,
            final_ticket=self.config.train_final_ticket,
        )
        self.params = get_prunable_parameters(model, self.config.include, self.config.exclude)
        if self.identity["seed"] is None:
            self.identity["seed"] = args.seed
        # Also when resuming: a finished run's results are never overwritten (and could not be, folder by folder).
        run_folder = Path(args.output_dir) / RUN_DIR
        if (run_folder / RUN_FILE).is_file():
            other = read_run_info(run_folder).get("identity", {})
            raise ValueError(
                f"output folder {args.output_dir} already holds an IRP run (run_id={other.get('run_id')!r}, "
                f"model={other.get('model')!r}); choose another output_dir or remove {run_folder}"
            )
        warn_if_rotation_leaves_no_complete_checkpoint(args, "IRPCallback")
        loader = kwargs.get("train_dataloader")
        self._run = run_fingerprint(args, state, _num_examples(loader))
        checkpoint = resumed_checkpoint(args, state)
        if checkpoint is not None:
            require_complete(
                checkpoint, is_complete, f"IRP state ({CHECKPOINT_STATE_DIR}/): written without IRPCallback, or killed while saving"
            )
            resume_dir = checkpoint / CHECKPOINT_STATE_DIR
            self._resume(resume_dir)
            zero_pruned_weights(model, self.masks)
            logger.info("IRP resumed from %s at cycle %d", checkpoint, self.cycle)
        else:
            if self.identity["run_id"] is None:
                self.identity["run_id"] = uuid.uuid4().hex[:12]
            warn_if_not_at_initialization(self.params, type(model).__name__, "IRPCallback")
            self.init_snapshot = snapshot_state(model)
            # w0 as views of the weights, then the snapshot's own tensors (share_initial_weights): no third copy.
            features = compute_initial_features(
                model, kwargs.get("train_dataloader"), self.config.feature_num_batches, params=self.params,
                copy_weights=False,
            )
            sentinel = self.config.cycles + 1
            cycle_pruned = {n: torch.full(p.param.shape, sentinel, dtype=torch.int16) for n, p in self.params.items()}
            total = sum(t.numel() for t in cycle_pruned.values())
            counts = kept_counts(
                total, self.config.cycles, self.config.final_sparsity, self.config.schedule, self.config.densities
            )
            self.record = IRPRecord(self.config.to_dict(), self.identity, counts, features, cycle_pruned)
            share_initial_weights(self.record.features, self.init_snapshot, self.params)
            self.cycle = 1
        self.record.training = training_recipe(args, self.cycle_ends)
        install_cyclic_schedule(
            args, kwargs["optimizer"], kwargs["lr_scheduler"], self.cycle_ends, self.config.rewind_step
        )
        self.enforce(model, self.masks)
        self._overhead_seconds += time.perf_counter() - start

    def on_step_end(self, args, state, control, **kwargs) -> TrainerControl:  # noqa: ANN001
        if self.config.rewind_step and self.cycle == 1 and state.global_step == self.config.rewind_step:
            self.rewind_snapshot = snapshot_state(kwargs["model"])
        if self.cycle <= len(self.cycle_ends) and state.global_step == self.cycle_ends[self.cycle - 1]:
            self._pending_end = True
            if self.config.evaluate_cycles:
                control.should_evaluate = True  # the cycle ends in on_evaluate, after the ticket is evaluated
            else:
                self._end_cycle(args, state, {}, kwargs)
        return control

    def on_log(self, args, state, control, logs: dict[str, float] | None = None, **kwargs) -> None:  # noqa: ANN001
        if logs is None or self.record is None:
            return
        # After the last cycle ends, self.cycle points one past it; the closing log lines belong to the last cycle.
        logs["irp_cycle"] = min(self.cycle, self.config.training_cycles)
        logs["irp_density"] = round(self.density_of(self.pruned_cycles_done()), 6)

    def on_evaluate(self, args, state, control, metrics: dict[str, float] | None = None, **kwargs) -> None:  # noqa: ANN001
        if self._pending_end:
            self._end_cycle(args, state, dict(metrics or {}), kwargs)

    def on_save(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if state.is_world_process_zero and self.record is not None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_STATE_DIR
            training_state = IRPTrainingState(
                self.record, self.cycle, self.cycle_ends, self.init_snapshot, self.rewind_snapshot, self._run
            )
            save_training_state(folder, training_state, self._parameter_shapes())

    def on_train_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        super().on_train_end(args, state, control, **kwargs)
        if not self.finished:
            logger.warning("IRP stopped before its last cycle (step %d); outputs not written", state.global_step)
            return
        if state.is_world_process_zero:
            self.save_run(Path(args.output_dir) / RUN_DIR, wall_seconds=time.time() - self._start_time)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # the results exist for every rank once train() returns

    # ----------------------------------------------------------------------------------------------------------
    # The cycle boundary: record the ticket, prune, rewind
    def _end_cycle(self, args: TrainingArguments, state: TrainerState, metrics: dict[str, Any], kwargs: Mapping) -> None:
        start = time.perf_counter()
        self._pending_end = False
        model: nn.Module = kwargs["model"]
        record = self.record
        assert record is not None
        cycle = self.cycle
        density = self.density_of(self.pruned_cycles_done())
        entry = {"cycle": cycle, "density": density, "sparsity": 1.0 - density, "step": state.global_step}
        # on_log adds this callback's own irp_* keys to the (shared) metrics dict; they would duplicate cycle/density.
        entry.update(
            {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith("irp_")}
        )
        record.history.append(entry)
        if cycle <= self.config.cycles:
            self._prune(model, state, cycle, kwargs.get("train_dataloader"))
        self.cycle += 1
        if self.cycle > self.config.training_cycles:
            record.finished = True
        else:
            self._rewind(model, kwargs["optimizer"], kwargs["lr_scheduler"])
        self._overhead_seconds += time.perf_counter() - start

    def _prune(self, model: nn.Module, state: TrainerState, cycle: int, loader: Any) -> None:
        """Score the trained weights and remove the next share; ``cycle_pruned`` records who went when."""
        current = self.masks
        if loader is not None and hasattr(loader, "set_epoch") and state.epoch is not None:
            # A data-dependent criterion reads the first batches of the epoch being trained. A resumed run trains
            # that epoch through a batch-skipping copy of the loader, so the loader itself still holds the epoch it
            # started at; without this, the resumed run would score on other batches.
            loader.set_epoch(max(0, math.ceil(state.epoch) - 1))
        scores = compute_scores(
            model,
            self.config.criterion,
            dataloader=loader,
            num_batches=self.config.criterion_num_batches,
            existing=current,
            params=self.params,
        )
        new = select_masks(
            scores,
            1.0 - self.counts[cycle] / self.total,
            scope=self.config.scope,
            min_density=self.config.min_density,
            existing=current,
        )
        new = broadcast_masks(new)
        for name, pruned_at in self.cycle_pruned.items():
            pruned_at[current[name].cpu() & ~new[name].cpu()] = cycle

    def _rewind(self, model: nn.Module, optimizer: Any, lr_scheduler: Any) -> None:
        """Rewind weights, buffers, optimizer state and schedule; then enforce the new mask."""
        snapshot = self.rewind_snapshot if self.config.rewind_step else self.init_snapshot
        if snapshot is None:
            raise RuntimeError("late-rewinding snapshot missing; rewind_step must lie inside the first cycle")
        restore_state(model, snapshot)
        masks = self.masks
        zero_pruned_weights(model, masks)
        unwrap_optimizer(optimizer).state.clear()  # momentum, Adam moments and step counts start over
        reset_learning_rates(optimizer, lr_scheduler)
        self.enforce(model, masks)

    # ----------------------------------------------------------------------------------------------------------
    # Resume
    def _parameter_shapes(self) -> dict[str, list[int]]:
        assert self.params is not None
        return {n: list(p.param.shape) for n, p in self.params.items()}

    def _resume(self, folder: Path) -> None:
        saved = load_training_state(folder, self.config.to_dict(), self._parameter_shapes())
        check_same_run(saved.run, self._run, folder.parent)
        saved_identity = saved.record.identity
        for key in ("model", "task"):
            if self.identity[key] and saved_identity.get(key) and self.identity[key] != saved_identity[key]:
                raise ValueError(f"checkpoint {folder} is for {key}={saved_identity[key]!r}, not {self.identity[key]!r}")
        self.identity.update({k: v for k, v in saved_identity.items() if v is not None})
        saved.record.identity = self.identity
        self.record = saved.record
        self.cycle = saved.cycle
        self.init_snapshot = saved.init_snapshot
        share_initial_weights(self.record.features, self.init_snapshot)
        self.rewind_snapshot = saved.rewind_snapshot


def _num_examples(loader: Any) -> int | None:
    """Training examples behind a dataloader (part of the run's fingerprint), when it can tell."""
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


def training_recipe(args: TrainingArguments, ends: list[int]) -> dict[str, Any]:
    """The training recipe of every cycle, as recorded in the run and its dataset card."""
    return {
        "optimizer": str(args.optim),
        "optimizer_args": args.optim_args,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": str(args.lr_scheduler_type),
        "weight_decay": args.weight_decay,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "world_size": args.world_size,
        "steps_per_cycle": ends[0] if ends else None,
        "epochs_per_cycle": float(args.num_train_epochs) / max(len(ends), 1) if args.max_steps <= 0 else None,
        "seed": args.seed,
    }
