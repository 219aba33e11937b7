"""``recipes/irp.py`` end to end: its configs, one process and two DDP processes through ``accelerate launch``, and
resuming a killed run through the runner it calls."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from autosparse_hf import MaskSet, kept_counts, load_score_dataset
from autosparse_hf.cli import parse_recipe_args
from autosparse_hf.irp import IRPConfig
from autosparse_hf.irp.callback import RUN_DIR, RUN_FILE
from autosparse_hf.irp.runner import IRPRunArguments, run_irp
from autosparse_hf.records import SCORE_FEATURES
from autosparse_hf.training import TrainRecipe
from tests.early_start import fixtures_used

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "irp.py"
TINY = ROOT / "recipes" / "configs" / "irp_tiny.yaml"
DEFAULT = ROOT / "recipes" / "configs" / "irp_lenet_mnist.yaml"
PROBE = ROOT / "tests" / "irp_ddp_probe.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"
OUTPUTS = ("scores", "scores.parquet", "final_mask", "cycles.png", "cycles.md", "cycles.csv", RUN_FILE,
           "irp_record.safetensors")
DATACLASSES = [IRPRunArguments, IRPConfig, TrainRecipe]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env.pop("ACCELERATE_USE_CPU", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def masks_sha256(masks) -> str:  # noqa: ANN001  (the same digest as tests/irp_ddp_probe.py)
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def survivors_per_cycle(folder: Path, cycles: int) -> list[int]:
    pruned = np.asarray(load_score_dataset(folder).with_format("numpy")[:]["cycle_pruned"])
    return [int((pruned > c).sum()) for c in range(cycles + 1)]


# -------------------------------------------------------------------------------------------------------- configs


def test_default_config_file_is_the_defaults_written_out() -> None:
    values = yaml.safe_load(DEFAULT.read_text())
    defaults = {}
    for cls in DATACLASSES:
        for f in dataclasses.fields(cls):
            defaults[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default
    assert values == defaults
    parsed = parse_recipe_args(DATACLASSES, ["--config", str(DEFAULT)])
    assert parsed == tuple(cls() for cls in DATACLASSES)


def test_tiny_config_parses_and_command_line_flags_override_it(tmp_path: Path) -> None:
    run, config, recipe = parse_recipe_args(DATACLASSES, ["--config", str(TINY), "--cycles", "2"])
    assert (run.task, run.model, run.max_train_samples) == ("digits", "lenet300100", 256)
    assert (config.cycles, config.final_sparsity, config.criterion) == (2, 0.9, "snip")
    assert (recipe.epochs, recipe.batch_size) == (1, 32)
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "\ncycle: 5\n")
    with pytest.raises(ValueError, match=r"unknown keys \['cycle'\]"):
        parse_recipe_args(DATACLASSES, ["--config", str(bad)])


# ------------------------------------------------------------------------------------- accelerate launch, 1 and 2


# The two launches, started once for the session: conftest.py starts them right after collection, so that they run
# on the second core while the in-process tests run; the tests of this file run last and only wait for them.
_STARTED: dict[str, tuple] = {}


def _start(launcher_args: list[str], script: Path, args: list[str], env: dict[str, str]) -> tuple:
    cmd = [str(ACCELERATE), "launch", *launcher_args, str(script), *args]
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, cmd


def _wait(name: str) -> None:
    process, cmd = _STARTED[name][:2]
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    assert process.returncode == 0, f"{' '.join(cmd)} failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"


def start_early(session: pytest.Session, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Launch the one-process recipe run and the two-process DDP probe run, at once (when a selected test uses them)."""
    if _STARTED or not fixtures_used(session, __name__) & {"single_process_run", "ddp_run"}:
        return
    out = tmp_path_factory.mktemp("irp-recipe-1proc")
    _STARTED["single"] = (*_start(
        ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
        RECIPE, ["--config", str(TINY), "--output_dir", str(out)], _env(),
    ), out)
    root = tmp_path_factory.mktemp("irp-recipe-2proc")
    out2, probe = root / "out", root / "probe"
    # --multi_gpu starts real torch.distributed processes (gloo on CPU); `--cpu --num_processes 2` would run one.
    _STARTED["ddp"] = (*_start(
        ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(_free_port())],
        PROBE, ["--config", str(TINY), "--output_dir", str(out2)], {**_env(), "IRP_PROBE_DIR": str(probe)},
    ), (out2, probe))


@pytest.fixture(scope="module")
def single_process_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    start_early(request.session, tmp_path_factory)
    _wait("single")
    return _STARTED["single"][2]


@pytest.fixture(scope="module")
def ddp_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    start_early(request.session, tmp_path_factory)
    _wait("ddp")
    return _STARTED["ddp"][2]


@pytest.mark.slow
def test_recipe_single_process_writes_the_run_folder(single_process_run: Path) -> None:
    folder = single_process_run / RUN_DIR
    for name in OUTPUTS:
        assert (folder / name).exists(), name
    info = json.loads((folder / RUN_FILE).read_text())
    assert info["finished"] and info["config"]["criterion"] == "snip" and info["identity"]["task"] == "digits"
    total = 64 * 300 + 300 * 100 + 100 * 10
    assert info["counts"] == kept_counts(total, 3, 0.9, "equal_count")
    assert [h["cycle"] for h in info["history"]] == [1, 2, 3, 4]
    ds = load_score_dataset(folder)
    assert len(ds) == total and ds.features == SCORE_FEATURES
    assert survivors_per_cycle(folder, 3) == info["counts"]
    final = MaskSet.from_pretrained(folder / "final_mask")
    assert final.num_kept == info["counts"][-1]
    # Per-cycle checkpoints (one epoch per cycle: 8 steps), the last two kept.
    assert sorted(p.name for p in single_process_run.glob("checkpoint-*")) == ["checkpoint-24", "checkpoint-32"]


@pytest.mark.slow
def test_recipe_two_ddp_processes_agree_and_write_once(single_process_run: Path, ddp_run: tuple[Path, Path]) -> None:
    out, probe = ddp_run
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["finished"] for r in ranks)
    # SNIP is data-dependent and the ranks saw different shards, yet every mask of every cycle is identical.
    assert ranks[0]["first_batch_sha256"] != ranks[1]["first_batch_sha256"]
    assert ranks[0]["cycle_masks_sha256"] == ranks[1]["cycle_masks_sha256"]
    assert ranks[0]["final_mask_sha256"] == ranks[1]["final_mask_sha256"]
    assert ranks[0]["g0_sha256"] == ranks[1]["g0_sha256"]
    # Only the main process writes: the run folder once, the IRP state into each of the 4 cycle checkpoints.
    assert [r["save_run"] for r in ranks] == [1, 0]
    assert [r["checkpoint_state"] for r in ranks] == [4, 0]
    folder = out / RUN_DIR
    for name in OUTPUTS:
        assert (folder / name).exists(), name
    assert not list(out.glob(".irp.tmp-*")) and not list(folder.glob(".*.tmp*"))
    assert masks_sha256(MaskSet.from_pretrained(folder / "final_mask")) == ranks[0]["final_mask_sha256"]
    # 2 ranks x 32 rows per step: 4 optimizer steps per one-epoch cycle.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-16"]
    # The same schema and the same schedule as one process.
    two, one = load_score_dataset(folder), load_score_dataset(single_process_run / RUN_DIR)
    assert two.features == one.features == SCORE_FEATURES and len(two) == len(one)
    assert survivors_per_cycle(folder, 3) == survivors_per_cycle(single_process_run / RUN_DIR, 3) == ranks[0]["kept"]
    info_two = json.loads((folder / RUN_FILE).read_text())
    info_one = json.loads((single_process_run / RUN_DIR / RUN_FILE).read_text())
    assert info_two["counts"] == info_one["counts"]
    assert [h["density"] for h in info_two["history"]] == [h["density"] for h in info_one["history"]]


# --------------------------------------------------------------------------------------- resuming via the runner


def test_runner_resumes_a_killed_run_and_refuses_a_finished_one(tmp_path: Path) -> None:
    run, config, recipe = parse_recipe_args(DATACLASSES, ["--config", str(TINY), "--output_dir", str(tmp_path / "a"),
                                                          "--criterion", "magnitude"])
    first = run_irp(run, config, recipe)
    reference = first.to_dataset()
    folder = tmp_path / "a" / RUN_DIR
    assert (folder / RUN_FILE).is_file()
    with pytest.raises(ValueError, match="already holds a finished IRP run"):
        run_irp(run, config, recipe)

    # Killed in cycle 4 (the final ticket): its checkpoint never written, no results yet.
    shutil.rmtree(folder)
    shutil.rmtree(tmp_path / "a" / "checkpoint-32")
    resumed = run_irp(run, config, recipe)
    assert resumed.identity == first.identity
    assert resumed.to_dataset().data.table.equals(reference.data.table)
    assert [h["eval_accuracy"] for h in resumed.history] == [h["eval_accuracy"] for h in first.history]

    # Killed while the results were being written: some folders in place, irp_run.json missing.
    (folder / RUN_FILE).unlink()
    (folder / "scores.parquet").unlink()
    again = run_irp(run, config, recipe)
    assert (folder / RUN_FILE).is_file() and (folder / "scores.parquet").is_file()
    assert load_score_dataset(folder).data.table.equals(reference.data.table)
    assert again.to_dataset().data.table.equals(reference.data.table)
    final = MaskSet.from_pretrained(folder / "final_mask")
    assert all(torch.equal(final[n], first.mask_after(3)[n]) for n in final)


def test_an_offline_push_fails_before_any_training(tmp_path: Path) -> None:
    import time

    from autosparse_hf.irp.runner import IRPRunArguments

    with pytest.raises(ValueError, match="needs hub_model_id"):
        IRPRunArguments(push_to_hub=True)
    with pytest.raises(ValueError, match="push_to_hub is a flag"):
        IRPRunArguments(push_to_hub="me/scores")
    out = tmp_path / "never-written"
    cmd = [sys.executable, "recipes/irp.py", "--push_to_hub", "true", "--hub_model_id", "me/scores",
           "--output_dir", str(out)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "offline" in done.stderr and "nothing was trained" in done.stderr
    assert not out.exists() and time.perf_counter() - start < 60
