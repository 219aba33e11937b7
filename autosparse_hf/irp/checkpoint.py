"""IRP's own state inside a Trainer checkpoint (``checkpoint-N/irp_state``): safetensors + JSON, never pickle.

A resumed run needs what the Trainer does not save: the snapshots it rewinds to, the survival record so far and
where it stands in the cycles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..features import feature_tensors, features_from_tensors
from ..masks.maskset import atomic_write_dir, commit_dir
from ..records import IRPRecord

CHECKPOINT_STATE_DIR = "irp_state"
STATE_FORMAT_VERSION = 1


STATE_FILE = "state.json"
TENSORS_FILE = "tensors.safetensors"


@dataclass
class IRPTrainingState:
    """Everything IRP needs to continue a run: the record so far, the cycle in progress and the rewind targets.

    ``run`` fingerprints what shapes the run beyond the IRP configuration (seed, data size, batch size, world
    size, length): a resume with other values would record a different run under the same id.
    """

    record: IRPRecord
    cycle: int
    cycle_ends: list[int]
    init_snapshot: dict[str, torch.Tensor]
    rewind_snapshot: dict[str, torch.Tensor] | None = None
    run: dict[str, Any] | None = None


def is_complete(checkpoint: Path) -> bool:
    """Whether a Trainer checkpoint holds complete IRP state (``state.json`` is written last)."""
    return (Path(checkpoint) / CHECKPOINT_STATE_DIR / STATE_FILE).is_file()


def run_fingerprint(args: Any, state: Any, train_examples: int | None) -> dict[str, Any]:
    """What shapes an IRP run besides its ``IRPConfig`` (compared on resume)."""
    return {
        "seed": args.seed,
        "world_size": args.world_size,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "max_steps": state.max_steps,
        "train_examples": train_examples,
    }


def check_same_run(saved: dict[str, Any] | None, now: dict[str, Any], folder: Path) -> None:
    """Raise ``ValueError`` listing every fingerprint entry that differs between the checkpoint and this run."""
    if saved is None:
        return  # written before fingerprints existed
    diff = {k: (saved.get(k), v) for k, v in now.items() if k in saved and saved.get(k) != v}
    if diff:
        listing = ", ".join(f"{k}: {a!r} saved, {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(
            f"checkpoint {folder} belongs to a different run ({listing}); resume with the arguments it was written "
            "with, or start a new run in another output_dir"
        )


def share_initial_weights(features: Any, snapshot: dict[str, torch.Tensor], params: Any = None) -> None:
    """Let the record's ``w0`` be the initial snapshot's own tensors where they are equal (they are, but for a
    process whose ``w0`` came from rank 0): neither is ever written, and a second copy of every prunable weight is
    held through the whole run otherwise (one model's size; 340 MB on GPT-2 small). A ``w0`` that is not shared and
    is still the live parameter (``params``: features computed without copying) is copied: training changes it."""
    live = {p.param.data_ptr() for p in params.values()} if params is not None else set()
    for name, w0 in features.weights.items():
        kept = snapshot.get(name)
        if (
            kept is not None and kept is not w0 and kept.shape == w0.shape and kept.dtype == w0.dtype
            and kept.device == w0.device and torch.equal(kept, w0)
        ):
            features.weights[name] = kept
        elif w0.data_ptr() in live:
            features.weights[name] = w0.clone()


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, each its own storage: a snapshot lists one copy of a tied weight under each of its
    names, the record's ``w0`` is the initial snapshot's own tensors, and safetensors refuses tensors that share
    memory (each name is written, and read back, on its own)."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        value = value.contiguous().cpu()
        storage = value.untyped_storage().data_ptr()
        out[key] = value.clone() if storage in seen and value.numel() else value
        seen.add(storage)
    return out


def save_training_state(folder: Path, state: IRPTrainingState, parameters: dict[str, list[int]]) -> None:
    """Write ``folder`` (``tensors.safetensors`` + ``state.json``) all-or-nothing."""
    record = state.record
    tensors: dict[str, torch.Tensor] = {f"init/{k}": v for k, v in state.init_snapshot.items()}
    if state.rewind_snapshot is not None:
        tensors.update({f"rewind/{k}": v for k, v in state.rewind_snapshot.items()})
    tensors.update({f"cycle_pruned/{n}": t.contiguous() for n, t in record.cycle_pruned.items()})
    tensors.update(feature_tensors(record.features))
    tensors = _unshared(tensors)
    meta = {
        "format_version": STATE_FORMAT_VERSION,
        "config": record.config,
        "identity": record.identity,
        "parameters": parameters,
        "cycle": state.cycle,
        "finished": record.finished,
        "counts": record.counts,
        "cycle_ends": state.cycle_ends,
        "history": record.history,
        "layers": [layer.to_dict() for layer in record.features.layers],
        "feature_num_batches": record.features.num_batches,
        "has_rewind_snapshot": state.rewind_snapshot is not None,
        "run": state.run,
    }
    target, tmp = atomic_write_dir(folder)
    save_file(tensors, str(tmp / TENSORS_FILE))
    commit_dir(target, tmp)
    # Written last and atomically: its presence marks the checkpoint's IRP part complete (is_complete).
    partial = target / f".{STATE_FILE}.tmp"
    partial.write_text(json.dumps(meta, indent=2))
    os.replace(partial, target / STATE_FILE)


def load_training_state(folder: Path, config: dict[str, Any], parameters: dict[str, list[int]]) -> IRPTrainingState:
    """Read ``folder``; the IRP configuration and the prunable parameters must be those of the run resuming it."""
    meta = json.loads((folder / STATE_FILE).read_text())
    if meta.get("format_version") != STATE_FORMAT_VERSION:
        raise ValueError(f"{folder} has IRP state format {meta.get('format_version')!r}, expected {STATE_FORMAT_VERSION}")
    if meta["config"] != config:
        diff = {k: (meta["config"].get(k), v) for k, v in config.items() if meta["config"].get(k) != v}
        raise ValueError(f"checkpoint {folder} was written by a different IRP configuration: {diff} (saved, now)")
    if meta["parameters"] != parameters:
        raise ValueError(f"checkpoint {folder} was written for a different model (prunable parameters differ)")
    tensors = load_file(str(folder / TENSORS_FILE))
    init = {k[len("init/") :]: v for k, v in tensors.items() if k.startswith("init/")}
    rewind = None
    if meta["has_rewind_snapshot"]:
        rewind = {k[len("rewind/") :]: v for k, v in tensors.items() if k.startswith("rewind/")}
    for key, value in tensors.items():
        # A rewind target with NaN/inf would train a broken network for the rest of the run without a word.
        if key.startswith(("init/", "rewind/")) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{folder / TENSORS_FILE}: snapshot tensor {key!r} holds NaN or inf values")
    record = IRPRecord(
        config=meta["config"],
        identity=meta["identity"],
        counts=meta["counts"],
        features=features_from_tensors(tensors, meta["layers"], meta["feature_num_batches"]),
        cycle_pruned={n: tensors[f"cycle_pruned/{n}"] for n in parameters},
        history=meta["history"],
        finished=meta["finished"],
    )
    return IRPTrainingState(record, meta["cycle"], list(meta["cycle_ends"]), init, rewind, meta.get("run"))
