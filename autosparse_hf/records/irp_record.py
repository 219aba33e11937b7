"""``IRPRecord``: one iterative-rewind-pruning run as an artifact, the only owner of the IRP run folder.

An IRP run (lottery tickets, arXiv 1803.03635, as the data generator of AutoSparse, arXiv 2408.14757) is recorded
losslessly by, for every prunable weight, the cycle after which it was pruned (``cycle_pruned``; ``cycles + 1`` for
survivors), plus the features at initialization, the kept-count schedule and the per-cycle history (the trained
ticket's metrics before each rewind). Everything else is derived from that: the nested masks of every cycle, the
trained ticket nearest a sparsity, the ticket of any density in the run's range (``ticket_source``), the
surviving-score ``datasets.Dataset``, its card and the lottery-ticket curve.

``IRPCallback`` fills a record while it trains and saves it with :meth:`IRPRecord.save_pretrained`; score datasets,
ticket reuse, plots, the benchmark and the pipeline read a run folder through :meth:`IRPRecord.from_pretrained`.

Example:
    ```python
    >>> from autosparse_hf.records import IRPRecord
    >>> record = IRPRecord.from_pretrained("outputs/irp")          # a run folder or the output_dir holding it
    >>> record.mask_after(10).density, record.nearest_ticket(0.95)["eval_accuracy"]
    >>> scores = record.to_dataset()                                # one row per weight
    ```
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..features import InitialFeatures, feature_tensors, features_from_tensors
from ..masks import MaskSet
from ..masks.maskset import atomic_write_dir, commit_dir
from .layout import FINAL_MASK_DIR, RECORD_FILE, RECORD_FORMAT_VERSION, RUN_DIR, RUN_FILE
from .report import write_cycle_report
from .score_dataset import build_score_dataset
from .score_io import load_score_dataset, save_score_dataset
from .tickets import IRPTicketSource, ticket_source_from_dataset


def resolve_run_folder(path: str | os.PathLike[str]) -> Path:
    """The run folder for ``path``: ``path`` itself when it holds ``irp_run.json``, else ``path/irp`` when that does
    (a Trainer ``output_dir``); otherwise ``path`` unchanged (the caller reports what is missing)."""
    path = Path(path)
    if not (path / RUN_FILE).is_file() and (path / RUN_DIR / RUN_FILE).is_file():
        return path / RUN_DIR
    return path


def is_complete_run(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (a run folder or the ``output_dir`` holding one) holds a finished IRP run."""
    return (resolve_run_folder(path) / RUN_FILE).is_file()


def read_run_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON description of a finished run (``irp_run.json``) without loading its tensors."""
    folder = resolve_run_folder(path)
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        raise FileNotFoundError(f"{path} is not a finished IRP run folder: {RUN_FILE} is missing")
    try:
        return json.loads(run_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{run_file} is not valid JSON: {err}") from err


def nearest_ticket(history: list[dict[str, Any]], sparsity: float) -> dict[str, Any]:
    """The trained ticket (history row) whose sparsity is nearest ``sparsity``; ties go to the earlier cycle."""
    if not history:
        raise ValueError("the IRP history is empty")
    return min(history, key=lambda row: abs(row["sparsity"] - sparsity))


@dataclass
class IRPRecord:
    """The survival record of one IRP run, with everything needed to rebuild its outputs.

    Attributes:
        config: The ``IRPConfig`` as a dict.
        identity: ``model``, ``task``, ``seed`` and ``run_id`` of the run.
        counts: Weights kept after each cycle, ``[N, k_1, ..., k_E]``.
        features: The features at initialization (``w0``, ``g0``, layer context, input statistics).
        cycle_pruned: Per tensor, the cycle after which each weight was pruned (``cycles + 1`` = survived).
        history: One dict per trained ticket: ``cycle``, ``density``, ``sparsity``, ``step`` and eval metrics.
        finished: Whether every cycle ran.
        training: The training recipe of every cycle (learning rate, epochs, batch size, world size, ...).
        timings: ``wall_seconds`` and ``callback_overhead_seconds`` of the run, when known.
        origin: Where the record was loaded from.
    """

    config: dict[str, Any]
    identity: dict[str, Any]
    counts: list[int]
    features: InitialFeatures
    cycle_pruned: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    timings: dict[str, float | None] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    origin: str = ""

    # ------------------------------------------------------------------------------------------------ derived
    @property
    def cycles(self) -> int:
        return int(self.config["cycles"])

    @property
    def total(self) -> int:
        return sum(t.numel() for t in self.cycle_pruned.values())

    @property
    def densities(self) -> list[float]:
        """Global density after each cycle, ``[1, d_1, ..., d_E]``."""
        return [c / self.counts[0] for c in self.counts]

    def mask_after(self, cycle: int) -> MaskSet:
        """The IRP mask after ``cycle`` pruning cycles (0 = dense); masks are nested, so this is lossless."""
        if not 0 <= cycle <= self.cycles:
            raise ValueError(f"cycle must be in [0, {self.cycles}], got {cycle}")
        return MaskSet(
            {n: t > cycle for n, t in self.cycle_pruned.items()},
            {"irp_cycle": cycle, "run_id": self.identity.get("run_id"), "source": "irp"},
        )

    def nearest_ticket(self, sparsity: float) -> dict[str, Any]:
        """The trained ticket of this run nearest ``sparsity`` (the lottery-ticket reference for PaI)."""
        return nearest_ticket(self.history, sparsity)

    def ticket_source(self) -> IRPTicketSource:
        """The run as a ticket source: the ticket, or its layer budgets, at any density in the run's range."""
        return IRPTicketSource(
            cycle_pruned=dict(self.cycle_pruned),
            w0={layer.name: self.features.weights[layer.name] for layer in self.features.layers},
            shapes={layer.name: tuple(layer.shape) for layer in self.features.layers},
            cycles=self.cycles,
            run_id=str(self.identity.get("run_id") or ""),
            origin=self.origin,
        )

    def run_info(self) -> dict[str, Any]:
        """JSON-ready description of the run (the content of ``irp_run.json``)."""
        info = {
            "format_version": RECORD_FORMAT_VERSION,
            "config": self.config,
            "identity": self.identity,
            "counts": self.counts,
            "densities": self.densities,
            "history": self.history,
            "layers": [layer.to_dict() for layer in self.features.layers],
            "feature_num_batches": self.features.num_batches,
            "finished": self.finished,
            "training": self.training,
        }
        info.update(self.timings)
        return info

    def to_dataset(self):  # noqa: ANN201  (datasets.Dataset)
        """The surviving-score ``datasets.Dataset``: one row per prunable weight."""
        if not self.finished:
            raise RuntimeError("the IRP run has not finished; its surviving scores are not final")
        return build_score_dataset(self.features, self.cycle_pruned, self.run_info())

    def tensors(self) -> dict[str, torch.Tensor]:
        """``cycle_pruned/<name>`` and the feature tensors, as stored in ``irp_record.safetensors``."""
        record = {f"cycle_pruned/{n}": t.contiguous() for n, t in self.cycle_pruned.items()}
        record.update(feature_tensors(self.features))
        return record

    # ------------------------------------------------------------------------------------------------ on disk
    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write the run folder all-or-nothing: the record tensors, the final mask, the per-cycle table and plot, the
        score dataset (``scores/`` with card, ``scores.parquet``), and last ``irp_run.json``, whose presence marks a
        complete folder."""
        info = self.run_info()
        target, tmp = atomic_write_dir(save_directory)
        save_file(self.tensors(), str(tmp / RECORD_FILE))
        self.mask_after(self.cycles).save_pretrained(tmp / FINAL_MASK_DIR)
        write_cycle_report(info, tmp)
        save_score_dataset(self.to_dataset(), tmp, info)
        # A save killed half-way leaves some folders without irp_run.json; a non-empty folder cannot be replaced by a
        # rename, so the stale ones go first (the run file is absent, so nothing complete is lost).
        for item in tmp.iterdir():
            if (target / item.name).is_dir():
                shutil.rmtree(target / item.name)
        commit_dir(target, tmp)
        partial = target / f".{RUN_FILE}.tmp"
        partial.write_text(json.dumps(info, indent=2))
        os.replace(partial, target / RUN_FILE)
        return target

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> IRPRecord:
        """Load a finished run from its folder (or from the ``output_dir`` holding ``irp/``), checked for consistency.

        Raises:
            FileNotFoundError: ``irp_run.json`` or ``irp_record.safetensors`` is missing (an unfinished run).
            ValueError: another record format, tensors that do not match the layers the run file lists, or a float
                tensor (``w0``, ``g0``, ``input_std``) holding NaN or infinity (naming the file and the tensor).
        """
        folder = resolve_run_folder(path)
        info = read_run_info(folder)
        if info.get("format_version") != RECORD_FORMAT_VERSION:
            raise ValueError(
                f"{folder / RUN_FILE} has record format {info.get('format_version')!r}; this library reads "
                f"{RECORD_FORMAT_VERSION}"
            )
        record_file = folder / RECORD_FILE
        if not record_file.is_file():
            raise FileNotFoundError(f"{folder} is not a finished IRP run folder: {RECORD_FILE} is missing")
        try:
            tensors = load_file(str(record_file))
            check_finite_tensors(tensors, record_file)
            features = features_from_tensors(tensors, info["layers"], info["feature_num_batches"])
            cycle_pruned = {n: tensors[f"cycle_pruned/{n}"] for n in features.names}
        except (KeyError, SafetensorError) as err:
            raise ValueError(f"the IRP run folder {folder} is corrupt: {err}") from err
        for layer in features.layers:
            if tuple(cycle_pruned[layer.name].shape) != tuple(layer.shape):
                raise ValueError(
                    f"{record_file}: cycle_pruned/{layer.name} has shape {tuple(cycle_pruned[layer.name].shape)}, "
                    f"the run file says {tuple(layer.shape)}"
                )
        timings = {k: info[k] for k in ("wall_seconds", "callback_overhead_seconds") if k in info}
        return cls(
            config=info["config"],
            identity=info["identity"],
            counts=list(info["counts"]),
            features=features,
            cycle_pruned=cycle_pruned,
            history=list(info["history"]),
            finished=bool(info.get("finished", True)),
            timings=timings,
            training=dict(info.get("training") or {}),
            origin=str(folder),
        )


def check_finite_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` and the tensor when a floating-point tensor holds NaN or infinity (a
    NaN ``w0`` would otherwise rank as a ticket, a NaN ``g0`` poison a predictor trained on the scores)."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        bad = ~torch.isfinite(tensor)
        if bad.any():
            first = int(bad.reshape(-1).nonzero()[0])
            raise ValueError(
                f"{path}: tensor {name!r} has {int(bad.sum())} non-finite value(s) (first at flat index {first}: "
                f"{tensor.reshape(-1)[first].item()}); the IRP record is corrupt"
            )


def build_score_dataset_from_run(folder: str | os.PathLike[str]):  # noqa: ANN201  (datasets.Dataset)
    """Rebuild the score dataset of a finished IRP run from its folder (``irp_run.json`` + the record)."""
    return IRPRecord.from_pretrained(folder).to_dataset()


def _fingerprint(path: Path) -> int:
    """Modification time of what a source reads, so a rewritten run folder is never served from the cache."""
    for candidate in (path / RUN_FILE, path):
        if candidate.exists():
            return candidate.stat().st_mtime_ns
    return 0


@lru_cache(maxsize=8)
def _load_cached(source: str, fingerprint: int) -> IRPTicketSource:  # noqa: ARG001  (part of the cache key)
    path = Path(source)
    if path.is_dir() and is_complete_run(path):
        return IRPRecord.from_pretrained(path).ticket_source()
    return ticket_source_from_dataset(load_score_dataset(source), origin=source)


def load_ticket_source(source: str | os.PathLike[str] | IRPTicketSource | IRPRecord) -> IRPTicketSource:
    """An IRP ticket source from an ``IRPRecord``, a run folder (or the ``output_dir`` holding one), a score dataset
    (folder, Parquet) or a Hub id.

    Raises ``ValueError`` for a corrupt or multi-run source, ``FileNotFoundError``/``ConnectionError`` when it cannot
    be found (offline Hub ids fail fast).
    """
    if isinstance(source, IRPTicketSource):
        return source
    if isinstance(source, IRPRecord):
        return source.ticket_source()
    key = str(resolve_run_folder(source).resolve()) if Path(source).exists() else str(source)
    try:
        return _load_cached(key, _fingerprint(resolve_run_folder(source)))
    except (KeyError, json.JSONDecodeError, SafetensorError) as err:
        raise ValueError(f"the IRP source {source} is corrupt: {err}") from err


def ticket_metadata(source: IRPTicketSource) -> dict[str, Any]:
    """What a mask records about the IRP run whose ticket or budgets it used."""
    return {"ticket_source": source.origin, "ticket_source_run_id": source.run_id}

