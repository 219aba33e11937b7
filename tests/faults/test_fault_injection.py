"""Fault injection: an IRP run and a PaI run killed at every write boundary resume to the uninterrupted result.

``fault_driver.py`` runs a tiny job (a 1,184-weight network on 64 digits, a real ``Trainer``) with
``kill_points.WriteBoundaries`` wrapping every primitive that writes a file; the job ends with ``os._exit`` right
after the boundary named in ``$AUTOSPARSE_KILL_AT``, leaving on disk exactly what a kill there leaves. For every
boundary the job is killed there in one process, resumed from its output folder in a fresh one (the stale temporary
folders and the incomplete checkpoints removed, the newest complete checkpoint resumed, as ``recipes/irp.py`` does),
and everything it leaves is compared with an uninterrupted run: the same files, every checkpoint's weights, optimizer,
scheduler and masks bit for bit, the IRP record, final mask, score dataset (folder, Parquet, card) and run files
equal up to timings.

The boundaries are listed below in the order an uninterrupted run passes them (``test_the_boundaries_are_all_listed``
fails when the library or transformers writes something new: add it). The jobs run in a fork server (imports once,
one fresh forked process per job, two at a time); the IRP curve's drawing is replaced by an empty figure there (its
write stays a boundary), since drawing it would cost more than the rest of a job.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from kill_points import KILLED_EXIT_CODE
from safetensors.torch import load_file

from autosparse_hf import MaskSet
from autosparse_hf.records import load_score_dataset
from autosparse_hf.records.score_dataset import description_documents
from tests.early_start import fixtures_used

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("fault_driver.py")
PARALLEL = max(1, min(2, os.cpu_count() or 1))
PLAN_TIMEOUT_S = 900

TRAINER_FILES = [
    "save_file {c}/model.safetensors",
    "torch.save {c}/training_args.bin",
    "torch.save {c}/optimizer.pt",
    "torch.save {c}/scheduler.pt",
    "torch.save {c}/rng_state.pth",
    "TrainerState.save_to_json {c}/trainer_state.json",
]
IRP_STATE = [  # irp.checkpoint.save_training_state: the tensors in a temporary folder renamed into place, state.json last
    "mkdtemp {c}/.irp_state.tmp-*",
    "save_file {c}/.irp_state.tmp-*/tensors.safetensors",
    "os.replace {c}/irp_state",
    "Path.write_text {c}/irp_state/.state.json.tmp",
    "os.replace {c}/irp_state/state.json",
]
PAI_MASKS = [  # MaskSet.save_pretrained: checkpoint-N/pai_masks written in a temporary folder renamed into place
    "mkdtemp {c}/.pai_masks.tmp-*",
    "Path.write_text {c}/.pai_masks.tmp-*/mask_config.json",
    "save_file {c}/.pai_masks.tmp-*/masks.safetensors",
    "os.replace {c}/pai_masks",
]
IRP_RECORD = [  # IRPRecord.save_pretrained: everything in a temporary folder renamed to irp/, irp_run.json last
    "mkdtemp .irp.tmp-*",
    "save_file .irp.tmp-*/irp_record.safetensors",
    "mkdtemp .irp.tmp-*/.final_mask.tmp-*",
    "Path.write_text .irp.tmp-*/.final_mask.tmp-*/mask_config.json",
    "save_file .irp.tmp-*/.final_mask.tmp-*/masks.safetensors",
    "os.replace .irp.tmp-*/final_mask",
    "Path.open .irp.tmp-*/cycles.csv",
    "Path.write_text .irp.tmp-*/cycles.md",
    "Figure.savefig .irp.tmp-*/cycles.png",
    "Dataset.save_to_disk .irp.tmp-*/scores",
    "Path.write_text .irp.tmp-*/scores/README.md",
    "write_score_parquet .irp.tmp-*/.scores.parquet.tmp",
    "os.replace .irp.tmp-*/scores.parquet",
    "os.replace irp",
    "Path.write_text irp/.irp_run.json.tmp",
    "os.replace irp/irp_run.json",
]


def _at(steps: list[str], checkpoint: str) -> list[str]:
    return [step.format(c=checkpoint) for step in steps]


# IRP: 2 pruning cycles + the final ticket, 4 steps each, a checkpoint at every cycle end, save_total_limit=2 (the
# third checkpoint's save deletes the first, between the Trainer's files and IRP's state).
IRP_BOUNDARIES = [
    *_at(TRAINER_FILES + IRP_STATE, "checkpoint-4"),
    *_at(TRAINER_FILES + IRP_STATE, "checkpoint-8"),
    *_at(TRAINER_FILES, "checkpoint-12"),
    "rmtree checkpoint-4",
    *_at(IRP_STATE, "checkpoint-12"),
    *IRP_RECORD,
]
# PaI: SNIP at 75% sparsity, 8 steps, a checkpoint every 4.
PAI_BOUNDARIES = [
    *_at(TRAINER_FILES + PAI_MASKS, "checkpoint-4"),
    *_at(TRAINER_FILES + PAI_MASKS, "checkpoint-8"),
]
JOBS = {"irp": IRP_BOUNDARIES, "pai": PAI_BOUNDARIES}


def _folder(job: str, index: int | None) -> str:
    return f"{job}-reference" if index is None else f"{job}-{index:02d}"


# The plan, started once for the session: conftest.py starts it right after collection, so that it runs on the
# second core while the in-process tests run; the tests of this file run last and only wait for it.
_STARTED: dict[str, Any] = {}


def start_early(session: pytest.Session, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Start every job of the plan in the fork server: each reference once, each boundary killed then resumed (when a
    selected test uses them)."""
    if _STARTED or "runs" not in fixtures_used(session, __name__):
        return
    root = tmp_path_factory.mktemp("faults")
    chains: list[list[dict[str, Any]]] = []
    names: list[str] = []
    for job, boundaries in JOBS.items():
        out = root / _folder(job, None)
        chains.append([{"job": job, "out": str(out), "census": str(root / f"{job}-census.json")}])
        names.append(out.name)
        for index, boundary in enumerate(boundaries):
            out = root / _folder(job, index)
            chains.append([{"job": job, "out": str(out), "kill": boundary}, {"job": job, "out": str(out)}])
            names.append(out.name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    plan = root / "plan.json"
    plan.write_text(json.dumps(chains) + "\n")
    log = (root / "server.log").open("w")
    with plan.open() as stdin:  # the server reads the plan from its stdin (its own copy of the file descriptor)
        server = subprocess.Popen(
            [sys.executable, str(DRIVER), "serve", str(PARALLEL)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
    _STARTED.update(root=root, names=names, server=server, log=log)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[int]]]:
    """The root folder and, per output folder name, the exit statuses of its jobs (the plan started by conftest.py
    in a full run, else here)."""
    start_early(request.session, tmp_path_factory)
    root, names, server = _STARTED["root"], _STARTED["names"], _STARTED["server"]
    try:
        stdout, _ = server.communicate(timeout=PLAN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.communicate()
        raise
    finally:
        _STARTED["log"].close()
    assert server.returncode == 0, (root / "server.log").read_text()[-3000:]
    codes = {}
    for line in stdout.splitlines():
        answer = json.loads(line)
        codes[names[answer["chain"]]] = answer["codes"]
    assert sorted(codes) == sorted(names), "the fork server did not answer for every job"
    return root, codes


def _log_tail(root: Path, name: str) -> str:
    log = root / f"{name}.log"
    return log.read_text()[-4000:] if log.is_file() else "(no log)"


# ------------------------------------------------------------------------------------------------ comparisons
TIMING_KEYS = ("wall_seconds", "callback_overhead_seconds", "total_flos")


def _is_timing(key: str) -> bool:
    return key.endswith("_runtime") or "per_second" in key or key in TIMING_KEYS


def _without_timings(value: Any) -> Any:
    """``value`` (parsed JSON) without wall-clock measurements, which no two runs share."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not _is_timing(k)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _files(folder: Path) -> list[str]:
    """Every file and folder (``name/``) under ``folder``: leftovers, empty temporary folders too, are told apart."""
    return sorted(p.relative_to(folder).as_posix() + ("/" if p.is_dir() else "") for p in folder.rglob("*"))


def _same_tensors(a: Path, b: Path) -> None:
    left, right = load_file(str(a)), load_file(str(b))
    assert sorted(left) == sorted(right), a
    for name in left:
        assert left[name].dtype == right[name].dtype and torch.equal(left[name], right[name]), f"{a}: {name} differs"


def _same_pickled(a: Path, b: Path) -> None:
    """Optimizer, scheduler and RNG states: equal as loaded (tensors bit for bit)."""
    left, right = torch.load(a, weights_only=False), torch.load(b, weights_only=False)  # files this test wrote

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return type(x) is type(y) and len(x) == len(y) and all(same(u, v) for u, v in zip(x, y, strict=True))
        if hasattr(x, "__array__") and not isinstance(x, (str, bytes)):
            return bool((x == y).all())
        return x == y

    assert same(left, right), f"{a} differs"


def _same_masks(a: Path, b: Path) -> None:
    left, right = MaskSet.from_pretrained(a), MaskSet.from_pretrained(b)  # validated on load
    assert list(left) == list(right) and all(torch.equal(left[n], right[n]) for n in left), f"{a}: masks differ"
    assert left.metadata == right.metadata


def _same_json(a: Path, b: Path) -> None:
    assert _without_timings(json.loads(a.read_text())) == _without_timings(json.loads(b.read_text())), a


def _same_checkpoints(out: Path, reference: Path) -> None:
    for checkpoint in sorted(reference.glob("checkpoint-*")):
        mine = out / checkpoint.name
        _same_tensors(mine / "model.safetensors", checkpoint / "model.safetensors")
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            _same_pickled(mine / name, checkpoint / name)
        _same_json(mine / "trainer_state.json", checkpoint / "trainer_state.json")
        if (checkpoint / "irp_state").is_dir():
            _same_tensors(mine / "irp_state/tensors.safetensors", checkpoint / "irp_state/tensors.safetensors")
            _same_json(mine / "irp_state/state.json", checkpoint / "irp_state/state.json")
        if (checkpoint / "pai_masks").is_dir():
            _same_masks(mine / "pai_masks", checkpoint / "pai_masks")


def _same_scores(a: Path, b: Path) -> None:
    left, right = load_score_dataset(a), load_score_dataset(b)  # checked on load (version, values)
    assert left.data.table.equals(right.data.table), f"{a}: rows differ"
    assert _without_timings(description_documents(left.info.description)) == _without_timings(
        description_documents(right.info.description)
    )


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if not _is_timing(k)} for row in csv.DictReader(f)]


def _same_irp_run(out: Path, reference: Path) -> None:
    mine, theirs = out / "irp", reference / "irp"
    _same_json(mine / "irp_run.json", theirs / "irp_run.json")
    _same_tensors(mine / "irp_record.safetensors", theirs / "irp_record.safetensors")
    _same_masks(mine / "final_mask", theirs / "final_mask")
    _same_scores(mine / "scores", theirs / "scores")
    _same_scores(mine / "scores.parquet", theirs / "scores.parquet")
    assert pq.read_table(mine / "scores.parquet").equals(pq.read_table(theirs / "scores.parquet"))
    assert _csv_rows(mine / "cycles.csv") == _csv_rows(theirs / "cycles.csv")
    for name in ("cycles.md", "cycles.png", "scores/README.md"):
        assert (mine / name).read_bytes() == (theirs / name).read_bytes(), name


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("job", sorted(JOBS))
def test_the_boundaries_are_all_listed(runs: tuple[Path, dict[str, list[int]]], job: str) -> None:
    root, codes = runs
    assert codes[_folder(job, None)] == [0], _log_tail(root, _folder(job, None))
    census = json.loads((root / f"{job}-census.json").read_text())
    assert census == JOBS[job], (
        "the write boundaries changed; list them in this module: "
        f"new {sorted(set(census) - set(JOBS[job]))}, gone {sorted(set(JOBS[job]) - set(census))}"
    )


def _check_boundary(runs: tuple[Path, dict[str, list[int]]], job: str, boundary: str) -> None:
    root, codes = runs
    name = _folder(job, JOBS[job].index(boundary))
    out, reference = root / name, root / _folder(job, None)
    assert codes[name][0] == KILLED_EXIT_CODE, f"not killed at {boundary!r}: {_log_tail(root, name)}"
    assert codes[name][1] == 0, f"the resume after a kill at {boundary!r} failed: {_log_tail(root, name)}"
    assert _files(out) == _files(reference), "the resumed run left other files than an uninterrupted one"
    _same_checkpoints(out, reference)
    if job == "irp":
        _same_irp_run(out, reference)


@pytest.mark.parametrize("boundary", IRP_BOUNDARIES)
def test_irp_killed_at_a_write_boundary_resumes_to_the_same_result(runs, boundary: str) -> None:  # noqa: ANN001
    _check_boundary(runs, "irp", boundary)


@pytest.mark.parametrize("boundary", PAI_BOUNDARIES)
def test_pai_killed_at_a_write_boundary_resumes_to_the_same_result(runs, boundary: str) -> None:  # noqa: ANN001
    _check_boundary(runs, "pai", boundary)
