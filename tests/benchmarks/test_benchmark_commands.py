"""The benchmark commands run end to end on tiny settings and write their results.

These tests check the mechanics only (exit code, the JSON result and its keys, ratios that are positive finite
numbers), never the speed: the numbers of a tiny run on a shared machine mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.early_start import selected_items

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
COMMON_KEYS = {"benchmark", "config", "results", "target", "environment"}
TARGET_KEYS = {"description", "measured", "target", "unit", "ratio", "higher_is_better", "met"}
TIMEOUT_S = 300

# Tiny settings: seconds of work each; most of a run is importing torch, transformers and datasets. The training
# benchmarks use the 8x8 digits (loaded in a fraction of a second; MNIST takes 3 s of CPU to load).
TINY_FLAGS: dict[str, list[str]] = {
    "scoring_throughput": [
        "--model", "test_resnet", "--num_classes", "10", "--image_size", "32", "--batch_size", "4",
        "--repeats", "1", "--warmup", "0", "--paper_sample", "16", "--paper_batch_size", "16",
    ],
    "enforcement_overhead": [
        "--model", "lenet300100", "--task", "digits", "--blocks", "1", "--max_steps", "6", "--warmup_steps", "2",
        "--batch_size", "32", "--interleaved_steps", "9",
    ],
    "irp_overhead": [
        "--task", "digits", "--cycles", "2", "--epochs", "1", "--max_train_samples", "128", "--dense_repeats", "1",
    ],
    "score_dataset_scale": ["--rows", "100000"],
    "autos_memory": [
        "--model", "test_resnet", "--num_classes", "10", "--image_size", "32", "--batch_size", "4",
        "--measure", "autos",
    ],
    "help_speed": ["--recipes", "benchmark", "irp", "--repeats", "1", "--warmup", "0"],
    "irp_boundary": ["--models", "gpt2-tiny", "--cycles", "1"],
    "synflow_overhead": [
        "--model", "test_resnet", "--num_classes", "10", "--image_size", "32", "--rounds", "3", "--repeats", "1",
    ],
    "criterion_cost": ["--models", "gpt2-tiny", "--criteria", "snip", "grasp", "--no_heap_release", "--timeout", "250"],
}  # fmt: skip


# The benchmark processes, started once for the session: conftest.py starts them right after collection, so that
# they run on the second core while the in-process tests run; the tests of this file run last and only wait.
_STARTED: dict[str, tuple] = {}


def start_early(session: pytest.Session, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Start every selected benchmark at once (they are independent processes); one intra-op thread each, since
    they share the machine."""
    if _STARTED:
        return
    selected = {item.name.removeprefix("test_") for item in selected_items(session, __name__)}
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for name, flags in TINY_FLAGS.items():
        if name not in selected:
            continue
        folder = tmp_path_factory.mktemp(name)
        output = folder / f"{name}.json"
        extra = ["--workdir", str(folder)] if name == "score_dataset_scale" else []
        process = subprocess.Popen(
            [sys.executable, str(BENCHMARKS / f"{name}.py"), *flags, *extra, "--output", str(output)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=folder,
        )
        _STARTED[name] = (process, output, folder)


@pytest.fixture(scope="module")
def launched(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The selected benchmarks' processes (started by conftest.py in a full run, else here)."""
    start_early(request.session, tmp_path_factory)
    yield _STARTED
    for process, _, _ in _STARTED.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


def finished(launched: dict, name: str) -> tuple[dict, Path]:
    """Wait for benchmark ``name``; check its exit code, printed table and JSON result; return the result."""
    process, output, folder = launched[name]
    stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, stderr[-4000:]
    assert "| " in stdout and "measured/target" in stdout, stdout[-2000:]
    result = json.loads(output.read_text())
    assert COMMON_KEYS <= set(result)
    assert result["benchmark"] == name
    assert TARGET_KEYS <= set(result["target"])
    assert isinstance(result["target"]["met"], bool)
    assert math.isfinite(result["target"]["measured"]) and math.isfinite(result["target"]["ratio"])
    assert result["config"]["output"] == str(output)
    return result, folder


def positive_finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def test_scoring_throughput(launched: dict) -> None:
    result, _ = finished(launched, "scoring_throughput")
    r = result["results"]
    autos, paper = r["autos"], r["paper_resnet18"]
    assert r["prunable_weights"] > 0 and paper["sample_rows"] == 16
    assert positive_finite(autos["weights_per_s"], paper["weights_per_s"], r["ratio_autos_over_paper"])
    assert positive_finite(result["target"]["ratio"])
    split_keys = {"gradient_s", "feature_statistics_s", "feature_rows_s", "prediction_s", "other_s"}
    assert set(autos["split_median"]) == split_keys
    # The split is taken inside the sequential runs: in each, its parts add up to that run's end-to-end time.
    for run in autos["runs"]["sequential"]:
        assert sum(run[k] for k in split_keys) == pytest.approx(run["seconds"], rel=1e-6)
        assert run["prediction_s"] > 0 and run["feature_statistics_s"] > 0 and run["feature_rows_s"] > 0
    assert set(autos["seconds_median_by_mode"]) == {"prefetch", "sequential"}
    assert autos["seconds_median"] == min(autos["seconds_median_by_mode"].values())
    assert positive_finite(r["autos_default"]["weights_per_s"])


def test_enforcement_overhead(launched: dict) -> None:
    result, _ = finished(launched, "enforcement_overhead")
    r = result["results"]
    assert positive_finite(r["dense_steps_per_s"], r["pruned_steps_per_s"], r["ratio_pruned_over_dense"])
    assert math.isfinite(r["slowdown_pct"])
    assert len(r["blocks"]) == 1
    # The pruned blocks really trained pruned: 90% of the prunable weights are exactly zero after training.
    assert r["achieved_zero_fraction"] == pytest.approx(0.9, abs=1e-3)
    assert result["target"]["higher_is_better"] is False
    # The floor: one bare pass over gradient-sized tensors, both kinds, timed and put against a dense step.
    assert set(r["pass_floor_ms"]) == set(r["pass_floor_pct_of_dense_step"]) == {"multiply", "write_zeros"}
    assert positive_finite(*r["pass_floor_ms"].values(), *r["pass_floor_pct_of_dense_step"].values())
    # The interleaved run: steps 1-9 enforced on, off, off, on, on, off, off, on, on; pairs (3, 4), (5, 6), (7, 8)
    # after 2 warmup steps (step 9 has no partner); the hooks ran on the enforced steps only.
    steps = r["interleaved"]
    assert steps["pairs"] == len(steps["pair_slowdowns_pct"]) == 3
    assert steps["enforced_steps"] == 5
    assert steps["hooked_parameters"] == 3  # lenet300100's three weight matrices
    assert steps["gradient_hook_calls"] == steps["enforced_steps"] * steps["hooked_parameters"]
    assert steps["slowdown_pct_q1"] <= steps["slowdown_pct"] <= steps["slowdown_pct_q3"]
    assert positive_finite(steps["enforced_step_ms"], steps["plain_step_ms"], steps["enforcement_ms_per_enforced_step"])
    assert result["target"]["measured"] == steps["slowdown_pct"]


def test_irp_overhead(launched: dict) -> None:
    result, _ = finished(launched, "irp_overhead")
    r = result["results"]
    assert r["training_cycles"] == 3
    assert positive_finite(
        r["irp_total_s"], r["dense_cycle_loop_s"], r["callback_overhead_s"], r["ratio_irp_loop_over_dense"]
    )
    assert 0 < r["callback_overhead_pct_of_total"] < 100
    assert r["irp_loop_s"] <= r["irp_total_s"]
    assert r["final_density"] == pytest.approx(0.01, abs=1e-3)
    assert positive_finite(result["target"]["ratio"])


def test_score_dataset_scale(launched: dict) -> None:
    result, folder = finished(launched, "score_dataset_scale")
    r = result["results"]
    assert 50_000 <= r["rows"] <= 150_000  # tensors shrink by whole output units
    assert r["load"]["num_rows"] == r["rows"]
    assert positive_finite(
        r["build_s"], r["save_s"], r["table_bytes"], r["arrow_folder_bytes"], r["parquet_bytes"],
        r["load_peak_over_table"], r["build_peak_over_table"],
    )  # fmt: skip
    assert r["load_private_peak_over_table"] >= 0
    assert [p.name for p in folder.iterdir() if p.name.startswith("bench_scores_")] == []  # cleaned up


def test_autos_memory(launched: dict) -> None:
    result, _ = finished(launched, "autos_memory")
    r = result["results"]
    assert set(r["measurements"]) == {"autos"}
    assert positive_finite(r["param_bytes"], r["autos_peak_delta_mb"], r["autos_peak_over_model"])
    assert positive_finite(result["target"]["ratio"])


def test_help_speed(launched: dict) -> None:
    result, _ = finished(launched, "help_speed")
    r = result["results"]
    assert set(r["recipes"]) == {"benchmark", "irp"} and positive_finite(r["reference_median_s"])
    for timing in r["recipes"].values():
        assert len(timing["runs_s"]) == 1 and positive_finite(timing["median_s"], timing["ratio_to_trainer_import"])
    assert result["target"]["higher_is_better"] is False
    markdown = Path(result["config"]["output"]).with_suffix(".md").read_text()
    assert "recipes/irp.py --help" in markdown and "measured/target" in markdown


def test_irp_boundary(launched: dict) -> None:
    result, _ = finished(launched, "irp_boundary")
    phases = result["results"]["models"]["gpt2-tiny"]["phases"]
    assert len(phases["score+select"]) == 1 and len(phases["rewind"]) == 1  # one pruning cycle, one rewind
    assert len(phases["boundary"]) == 2  # the pruning cycle's end and the final ticket's
    assert positive_finite(*(c["seconds"] for c in phases["boundary"]))
    assert result["target"]["higher_is_better"] is False
    assert "measured/target" in Path(result["config"]["output"]).with_suffix(".md").read_text()


def test_synflow_overhead(launched: dict) -> None:
    result, _ = finished(launched, "synflow_overhead")
    r = result["results"]
    assert positive_finite(r["passes"]["wall_s"], r["global"]["ratio_wall"], r["budgets"]["ratio_wall"])
    # SynFlow runs its passes and more: its own time in them is part of its wall time.
    assert 0 < r["global"]["passes_inside_s"] <= r["global"]["wall_s"]
    assert result["target"]["higher_is_better"] is False
    assert "measured/target" in Path(result["config"]["output"]).with_suffix(".md").read_text()


def test_criterion_cost(launched: dict) -> None:
    result, _ = finished(launched, "criterion_cost")
    r = result["results"]
    cells = r["cells"]["gpt2-tiny"]
    assert set(cells) == {"snip", "grasp"} and all(c["status"] == "ok" for c in cells.values()), cells
    assert positive_finite(*(c["seconds"] for c in cells.values()))
    # --no_heap_release reaches the cells and the report says so.
    assert r["heap_release"] is False and not any(c["heap_release"] for c in cells.values())
    assert "heap release (malloc_trim): off" in Path(result["config"]["output"]).with_suffix(".md").read_text()
