"""``IRPCallback``: iterative rewind pruning inside one ``Trainer.train()`` call."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerControl, TrainerState, TrainingArguments, get_scheduler

from ..callbacks import MaskEnforcingCallback
from ..criteria import compute_scores
from ..families import PrunableParameter, get_prunable_parameters
from ..features import InitialFeatures, compute_initial_features, feature_tensors, features_from_tensors
from ..masks import MaskSet, broadcast_masks, select_masks, zero_pruned_weights
from ..masks.maskset import atomic_write_dir, commit_dir
from ..state import restore_state, snapshot_state
from .config import IRPConfig
from .schedule import kept_counts

logger = logging.getLogger(__name__)

CHECKPOINT_STATE_DIR = "irp_state"
RUN_DIR = "irp"
RUN_FILE = "irp_run.json"
RECORD_FILE = "irp_record.safetensors"
STATE_FORMAT_VERSION = 1


def _unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)


def _unwrap_scheduler(scheduler: Any) -> Any:
    return getattr(scheduler, "scheduler", scheduler)


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
        self.features: InitialFeatures | None = None
        self.cycle_pruned: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, Any]] = []
        self.counts: list[int] = []
        self.cycle = 1  # the training cycle in progress, 1-based
        self.cycle_ends: list[int] = []
        self.init_snapshot: dict[str, torch.Tensor] = {}
        self.rewind_snapshot: dict[str, torch.Tensor] | None = None
        self.finished = False
        self._pending_end = False
        self._overhead_seconds = 0.0
        self._start_time = 0.0

    # ----------------------------------------------------------------------------------------------------------
    # Derived state
    @property
    def total(self) -> int:
        return sum(t.numel() for t in self.cycle_pruned.values())

    def pruned_cycles_done(self) -> int:
        """Pruning steps already applied (the current mask is the one after this many cycles)."""
        return min(self.cycle - 1, self.config.cycles)

    def mask_after(self, cycle: int) -> MaskSet:
        """The IRP mask after ``cycle`` pruning cycles (0 = dense); masks are nested, so this is lossless."""
        if not 0 <= cycle <= self.config.cycles:
            raise ValueError(f"cycle must be in [0, {self.config.cycles}], got {cycle}")
        return MaskSet(
            {n: t > cycle for n, t in self.cycle_pruned.items()},
            {"irp_cycle": cycle, "run_id": self.identity["run_id"], "source": "irp"},
        )

    @property
    def masks(self) -> MaskSet:
        """The mask in force now."""
        return self.mask_after(self.pruned_cycles_done())

    def density_of(self, cycle: int) -> float:
        return self.counts[cycle] / self.counts[0]

    # ----------------------------------------------------------------------------------------------------------
    # Trainer events
    def _check_length(self, args: TrainingArguments, state: TrainerState) -> None:
        n, k = self.config.training_cycles, self.config.rewind_step
        total = state.max_steps
        # total = T + (n - 1) * (T - k), solved for the cycle length T. Counted in epochs (and rewinding to step 0),
        # every cycle must also be a whole number of epochs: 9 epochs of 8 steps divide into 4 cycles of 18 steps,
        # but cycles that end mid-epoch are not what "num_train_epochs = cycles x epochs per cycle" asked for.
        epochs_per_cycle = float(args.num_train_epochs) / n
        whole_epochs = args.max_steps > 0 or k > 0 or epochs_per_cycle == int(epochs_per_cycle)
        if (total + (n - 1) * k) % n != 0 or not whole_epochs:
            t = math.ceil((total + (n - 1) * k) / n)
            good = t + (n - 1) * (t - k)
            if args.max_steps > 0:
                what = f"max_steps={args.max_steps} is not divisible into them"
            elif not whole_epochs:
                what = f"num_train_epochs={args.num_train_epochs} is not a whole multiple of {n}"
            else:
                what = f"num_train_epochs={args.num_train_epochs} gives {total} optimizer steps, not divisible into them"
            hint = (
                f"use num_train_epochs = {n} x (epochs per cycle), e.g. {n * max(1, round(args.num_train_epochs / n))}"
                if args.max_steps <= 0 and k == 0
                else f"use max_steps={good}"
            )
            raise ValueError(
                f"IRP needs {n} training cycles of equal length ({self.config.cycles} cycles"
                f"{' + the final ticket' if self.config.train_final_ticket else ''}), but {what}; {hint}."
            )
        length = (total + (n - 1) * k) // n
        if k >= length:
            raise ValueError(f"rewind_step={k} must be smaller than the cycle length ({length} optimizer steps)")
        self.cycle_ends = [length + (c - 1) * (length - k) for c in range(1, n + 1)]

    def _install_cyclic_schedule(self, args: TrainingArguments, optimizer: Any, lr_scheduler: Any) -> None:
        """Make the LR schedule restart every cycle: step s of cycle c >= 2 uses position k + (s - end_{c-1})."""
        scheduler = _unwrap_scheduler(lr_scheduler)
        if not hasattr(scheduler, "lr_lambdas"):
            raise ValueError(
                f"IRPCallback needs a LambdaLR schedule (any transformers lr_scheduler_type except "
                f"reduce_lr_on_plateau); got {type(scheduler).__name__}"
            )
        length = self.cycle_ends[0]
        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        one_cycle = get_scheduler(
            args.lr_scheduler_type,
            dummy,
            num_warmup_steps=args.get_warmup_steps(length),
            num_training_steps=length,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs or {},
        )
        base = one_cycle.lr_lambdas[0]
        ends, k = list(self.cycle_ends), self.config.rewind_step

        def cyclic(step: int) -> float:
            position = step
            for end in ends[:-1]:
                if step >= end:
                    position = k + (step - end)
            return base(position)

        scheduler.lr_lambdas = [cyclic for _ in scheduler.lr_lambdas]
        self._reset_lrs(optimizer, lr_scheduler)

    @staticmethod
    def _reset_lrs(optimizer: Any, lr_scheduler: Any) -> None:
        scheduler = _unwrap_scheduler(lr_scheduler)
        for group, base_lr, fn in zip(_unwrap_optimizer(optimizer).param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
            group["lr"] = base_lr * fn(scheduler.last_epoch)
        scheduler._last_lr = [g["lr"] for g in _unwrap_optimizer(optimizer).param_groups]

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        start = time.perf_counter()
        self._start_time = time.time()
        model: nn.Module = kwargs["model"]
        self._check_length(args, state)
        self.params = get_prunable_parameters(model, self.config.include, self.config.exclude)
        if self.identity["seed"] is None:
            self.identity["seed"] = args.seed
        resume_dir = Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_STATE_DIR
        # Also when resuming: a finished run's results are never overwritten (and could not be, folder by folder).
        run_file = Path(args.output_dir) / RUN_DIR / RUN_FILE
        if run_file.is_file():
            other = json.loads(run_file.read_text()).get("identity", {})
            raise ValueError(
                f"output folder {args.output_dir} already holds an IRP run (run_id={other.get('run_id')!r}, "
                f"model={other.get('model')!r}); choose another output_dir or remove {run_file.parent}"
            )
        if state.global_step > 0:
            if not resume_dir.is_dir():
                raise FileNotFoundError(
                    f"resuming at step {state.global_step} but {resume_dir} does not exist; IRP cannot resume "
                    "from a checkpoint written without IRPCallback"
                )
            self._load_checkpoint_state(resume_dir, model)
            zero_pruned_weights(model, self.masks)
        else:
            if self.identity["run_id"] is None:
                self.identity["run_id"] = uuid.uuid4().hex[:12]
            self.init_snapshot = snapshot_state(model)
            self.features = compute_initial_features(
                model, kwargs.get("train_dataloader"), self.config.feature_num_batches, params=self.params
            )
            sentinel = self.config.cycles + 1
            self.cycle_pruned = {
                n: torch.full(p.param.shape, sentinel, dtype=torch.int16) for n, p in self.params.items()
            }
            self.counts = kept_counts(
                self.total, self.config.cycles, self.config.final_sparsity, self.config.schedule, self.config.densities
            )
            self.cycle = 1
            self.history = []
            self.finished = False
        self._install_cyclic_schedule(args, kwargs["optimizer"], kwargs["lr_scheduler"])
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
        if logs is None or self.params is None:
            return
        logs["irp_cycle"] = self.cycle
        logs["irp_density"] = round(self.density_of(self.pruned_cycles_done()), 6)

    def on_evaluate(self, args, state, control, metrics: dict[str, float] | None = None, **kwargs) -> None:  # noqa: ANN001
        if self._pending_end:
            self._end_cycle(args, state, dict(metrics or {}), kwargs)

    def on_save(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if state.is_world_process_zero and self.params is not None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_STATE_DIR
            self._save_checkpoint_state(folder)

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
    # The cycle boundary
    def _end_cycle(self, args: TrainingArguments, state: TrainerState, metrics: dict[str, Any], kwargs: Mapping) -> None:
        start = time.perf_counter()
        self._pending_end = False
        model: nn.Module = kwargs["model"]
        cycle = self.cycle
        density = self.density_of(self.pruned_cycles_done())
        entry = {"cycle": cycle, "density": density, "sparsity": 1.0 - density, "step": state.global_step}
        # on_log adds this callback's own irp_* keys to the (shared) metrics dict; they would duplicate cycle/density.
        entry.update(
            {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not k.startswith("irp_")}
        )
        self.history.append(entry)
        if cycle <= self.config.cycles:
            current = self.masks
            loader = kwargs.get("train_dataloader")
            if loader is not None and hasattr(loader, "set_epoch") and state.epoch is not None:
                # A data-dependent criterion reads the first batches of the epoch being trained. A resumed run
                # trains that epoch through a batch-skipping copy of the loader, so the loader itself still holds
                # the epoch it started at; without this, the resumed run would score on other batches.
                loader.set_epoch(max(0, math.ceil(state.epoch) - 1))
            scores = compute_scores(
                model,
                self.config.criterion,
                dataloader=kwargs.get("train_dataloader"),
                num_batches=self.config.criterion_num_batches,
                existing=current,
                params=self.params,
            )
            target = self.counts[cycle]
            new = select_masks(
                scores,
                1.0 - target / self.total,
                scope=self.config.scope,
                min_density=self.config.min_density,
                existing=current,
            )
            new = broadcast_masks(new)
            for name, record in self.cycle_pruned.items():
                record[current[name].cpu() & ~new[name].cpu()] = cycle
        self.cycle += 1
        if self.cycle > self.config.training_cycles:
            self.finished = True
        else:
            self._rewind(model, kwargs["optimizer"], kwargs["lr_scheduler"])
        self._overhead_seconds += time.perf_counter() - start

    def _rewind(self, model: nn.Module, optimizer: Any, lr_scheduler: Any) -> None:
        """Rewind weights, buffers, optimizer state and schedule; then enforce the new mask."""
        snapshot = self.rewind_snapshot if self.config.rewind_step else self.init_snapshot
        if snapshot is None:
            raise RuntimeError("late-rewinding snapshot missing; rewind_step must lie inside the first cycle")
        restore_state(model, snapshot)
        masks = self.masks
        zero_pruned_weights(model, masks)
        _unwrap_optimizer(optimizer).state.clear()  # momentum, Adam moments and step counts start over
        self._reset_lrs(optimizer, lr_scheduler)
        self.enforce(model, masks)

    # ----------------------------------------------------------------------------------------------------------
    # Checkpoint state (safetensors + JSON, never pickle)
    def _identity_check(self) -> dict[str, Any]:
        assert self.params is not None
        return {n: list(p.param.shape) for n, p in self.params.items()}

    def _save_checkpoint_state(self, folder: Path) -> None:
        assert self.features is not None
        tensors: dict[str, torch.Tensor] = {}
        for key, value in self.init_snapshot.items():
            tensors[f"init/{key}"] = value.contiguous().cpu()
        if self.rewind_snapshot is not None:
            for key, value in self.rewind_snapshot.items():
                tensors[f"rewind/{key}"] = value.contiguous().cpu()
        for name in self.cycle_pruned:
            tensors[f"cycle_pruned/{name}"] = self.cycle_pruned[name].contiguous()
        tensors.update(feature_tensors(self.features))
        meta = {
            "format_version": STATE_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "identity": self.identity,
            "parameters": self._identity_check(),
            "cycle": self.cycle,
            "finished": self.finished,
            "counts": self.counts,
            "cycle_ends": self.cycle_ends,
            "history": self.history,
            "layers": [layer.to_dict() for layer in self.features.layers],
            "feature_num_batches": self.features.num_batches,
            "has_rewind_snapshot": self.rewind_snapshot is not None,
        }
        target, tmp = atomic_write_dir(folder)
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=2))
        commit_dir(target, tmp)

    def _load_checkpoint_state(self, folder: Path, model: nn.Module) -> None:
        meta = json.loads((folder / "state.json").read_text())
        if meta.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(f"{folder} has IRP state format {meta.get('format_version')!r}, expected {STATE_FORMAT_VERSION}")
        if meta["config"] != self.config.to_dict():
            diff = {k: (meta["config"].get(k), v) for k, v in self.config.to_dict().items() if meta["config"].get(k) != v}
            raise ValueError(f"checkpoint {folder} was written by a different IRP configuration: {diff} (saved, now)")
        if meta["parameters"] != self._identity_check():
            raise ValueError(f"checkpoint {folder} was written for a different model (prunable parameters differ)")
        tensors = load_file(str(folder / "tensors.safetensors"))
        self.init_snapshot = {k[len("init/") :]: v for k, v in tensors.items() if k.startswith("init/")}
        if meta["has_rewind_snapshot"]:
            self.rewind_snapshot = {k[len("rewind/") :]: v for k, v in tensors.items() if k.startswith("rewind/")}
        names = list(self.params or {})
        self.cycle_pruned = {n: tensors[f"cycle_pruned/{n}"] for n in names}
        self.features = features_from_tensors(tensors, meta["layers"], meta["feature_num_batches"])
        saved_identity = meta["identity"]
        for key in ("model", "task"):
            if self.identity[key] and saved_identity.get(key) and self.identity[key] != saved_identity[key]:
                raise ValueError(f"checkpoint {folder} is for {key}={saved_identity[key]!r}, not {self.identity[key]!r}")
        self.identity.update({k: v for k, v in saved_identity.items() if v is not None})
        self.counts = meta["counts"]
        self.cycle = meta["cycle"]
        self.finished = meta["finished"]
        self.history = meta["history"]

    # ----------------------------------------------------------------------------------------------------------
    # Results
    def run_info(self) -> dict[str, Any]:
        """JSON-ready description of the run: configuration, identity, schedule and per-cycle results."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "identity": self.identity,
            "counts": self.counts,
            "densities": [c / self.counts[0] for c in self.counts],
            "history": self.history,
            "layers": [layer.to_dict() for layer in self.features.layers] if self.features else [],
            "feature_num_batches": self.features.num_batches if self.features else None,
            "finished": self.finished,
        }

    def to_dataset(self):  # noqa: ANN201  (datasets.Dataset; imported lazily)
        """The surviving-score ``datasets.Dataset`` of this run: one row per prunable weight."""
        from ..scores import build_score_dataset

        if self.features is None or not self.finished:
            raise RuntimeError("the IRP run has not finished; train first")
        return build_score_dataset(self.features, self.cycle_pruned, self.run_info())

    def save_run(self, folder: Path, wall_seconds: float | None = None) -> None:
        """Write the run folder: ``irp_run.json``, ``irp_record.safetensors``, the final mask, the per-cycle table
        and plot, and the score dataset (``scores/`` with card, and ``scores.parquet``)."""
        from ..scores import save_score_dataset
        from .report import write_cycle_report

        assert self.features is not None
        info = self.run_info()
        info["wall_seconds"] = wall_seconds
        info["callback_overhead_seconds"] = self._overhead_seconds
        target, tmp = atomic_write_dir(folder)
        record = {}
        for name in self.cycle_pruned:
            record[f"cycle_pruned/{name}"] = self.cycle_pruned[name].contiguous()
        record.update(feature_tensors(self.features))
        save_file(record, str(tmp / RECORD_FILE))
        self.mask_after(self.config.cycles).save_pretrained(tmp / "final_mask")
        write_cycle_report(info, tmp)
        save_score_dataset(self.to_dataset(), tmp, info)
        # A save killed half-way leaves some folders without irp_run.json; a non-empty folder cannot be replaced by a
        # rename, so the stale ones go first (the run file is absent, so nothing complete is lost).
        for item in tmp.iterdir():
            if (target / item.name).is_dir():
                shutil.rmtree(target / item.name)
        commit_dir(target, tmp)
        # Written last, atomically: its presence marks a complete run folder.
        partial = target / f".{RUN_FILE}.tmp"
        partial.write_text(json.dumps(info, indent=2))
        os.replace(partial, target / RUN_FILE)
