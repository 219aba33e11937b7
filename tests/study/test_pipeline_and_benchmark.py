"""End to end on tiny settings: the AutoSparse pipeline and the benchmark runner (mechanics, not accuracy)."""

from __future__ import annotations

import json

import pytest
import yaml

from autosparse_hf.irp import IRPConfig
from autosparse_hf.study.benchmark import BenchmarkConfig, paired_differences, run_benchmark
from autosparse_hf.study.pipeline import PipelineArguments, run_pipeline
from autosparse_hf.training import TrainRecipe


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):  # noqa: ANN201
    out = tmp_path_factory.mktemp("pipeline")
    args = PipelineArguments(
        output_dir=str(out), model="lenet300100", task="digits", seeds=[1], sparsities=[0.9],
        criteria=["snip", "autos"],
    )
    recipe = TrainRecipe(epochs=1, batch_size=128)
    result = run_pipeline(args, IRPConfig(cycles=2, final_sparsity=0.9, feature_num_batches=1), recipe)
    return out, result, args, recipe


def test_pipeline_writes_every_stage_and_the_summary(pipeline_run):
    out, result, _, _ = pipeline_run
    for path in ("irp_run/irp/scores", "autos/model.safetensors", "autos/metrics.json", "grid/results.csv",
                 "summary.md", "accuracy.png", "pipeline_config.json"):
        assert (out / path).exists(), path
    methods = {r["criterion"] for r in result["summary"]}
    assert methods == {"dense", "snip", "autos"}
    text = (out / "summary.md").read_text()
    assert "| snip |" in text and "| autos |" in text and "IRP tickets" in text
    config = json.loads((out / "autos" / "config.json").read_text())
    assert config["target"] == "membership" and config["budget_model"] is not None


def test_pipeline_resumes_without_recomputing(pipeline_run):
    out, _, args, recipe = pipeline_run
    cells = (out / "grid" / "cells.jsonl").read_text()
    stamp = (out / "autos" / "model.safetensors").stat().st_mtime
    run_pipeline(args, IRPConfig(cycles=2, final_sparsity=0.9, feature_num_batches=1), recipe)
    assert (out / "grid" / "cells.jsonl").read_text() == cells
    assert (out / "autos" / "model.safetensors").stat().st_mtime == stamp


def test_pipeline_refuses_the_source_seed():
    with pytest.raises(ValueError, match="IRP seed"):
        PipelineArguments(irp_seed=0, seeds=[0, 1])


def test_benchmark_runner_tables_and_paired_differences(pipeline_run, tmp_path):
    out, _, _, _ = pipeline_run
    config_file = tmp_path / "bench.yaml"
    config_file.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "bench"),
        "source_irp": str(out / "irp_run" / "irp"),
        "predictor": str(out / "autos"),
        "methods": ["random", "snip", "autos", "ticket", "snip@irp"],
        "sparsities": [0.8],
        "seeds": [1, 2],
        "recipe": {"epochs": 1, "batch_size": 128},
        "targets": [{"name": "lenet-digits", "model": "lenet300100", "task": "digits"}],
    }))
    config = BenchmarkConfig.from_yaml(config_file)
    result = run_benchmark(config)
    rows = result["results"]["lenet-digits"]["rows"]
    assert {r["criterion"] for r in rows} == {"dense", "random", "snip", "autos", "ticket", "snip@irp"}
    assert all(abs(r["achieved_sparsity"] - 0.8) < 1e-3 for r in rows if r["criterion"] != "dense")
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "Paired difference" in report and "(vs " in report
    assert (tmp_path / "bench" / "lenet-digits" / "accuracy.png").is_file()


def test_paired_differences_pair_by_seed():
    rows = [
        {"criterion": "snip", "sparsity": 0.9, "seed": 1, "accuracy": 0.80},
        {"criterion": "snip", "sparsity": 0.9, "seed": 2, "accuracy": 0.90},
        {"criterion": "random", "sparsity": 0.9, "seed": 1, "accuracy": 0.50},
        {"criterion": "random", "sparsity": 0.9, "seed": 2, "accuracy": 0.60},
        {"criterion": "autos", "sparsity": 0.9, "seed": 1, "accuracy": 0.85},
        {"criterion": "autos", "sparsity": 0.9, "seed": 2, "accuracy": 0.91},
    ]
    diffs = {d["method"]: d for d in paired_differences(rows)}
    assert diffs["autos"]["best_baseline"] == "snip"
    assert diffs["autos"]["diff_mean"] == pytest.approx(0.03)
    assert diffs["autos"]["diff_std"] == pytest.approx(0.0282842712, rel=1e-6)  # stdev of (0.05, 0.01)
    assert diffs["random"]["diff_mean"] == pytest.approx(-0.30)


def test_benchmark_config_rejects_unknown_keys_and_the_source_seed(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methodz: [snip]\n")
    with pytest.raises(ValueError, match="methodz"):
        BenchmarkConfig.from_yaml(bad)
    config = BenchmarkConfig(seeds=[0, 1])
    with pytest.raises(ValueError, match="fresh seeds"):
        config.validate()


def test_reference_irp_schedule_has_a_cycle_at_every_benchmark_density():
    from autosparse_hf.irp import IRPConfig, kept_counts
    from autosparse_hf.study.benchmark import reference_densities

    densities = reference_densities([0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99])
    assert densities[0] == pytest.approx(0.9505) and densities[-1] == pytest.approx(0.01)
    assert all(b < a for a, b in zip(densities, densities[1:], strict=False))
    config = IRPConfig(densities=densities)
    counts = kept_counts(266_200, config.cycles, config.final_sparsity, config.schedule, config.densities)
    for sparsity in (0.5, 0.8, 0.9, 0.95, 0.98, 0.99):
        assert round((1 - sparsity) * 266_200) in counts  # an exact ticket at every benchmark sparsity
    # 0.5, 0.2, 0.1, 0.05 and 0.02 are not densities of the default schedule (0.505, 0.208, 0.109, 0.0595); 0.01 is.
    assert len(densities) == 20 + 5


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".."])
def test_benchmark_target_names_cannot_leave_the_output_folder(name):
    from autosparse_hf.study.benchmark import BenchmarkTarget

    config = BenchmarkConfig(targets=[BenchmarkTarget(name=name, model="lenet300100", task="digits")])
    with pytest.raises(ValueError, match="names a folder"):
        config.validate()


def test_methods_inside_learned_budgets_get_the_predictor_and_plain_methods_do_not():
    from autosparse_hf.study.benchmark import BenchmarkConfig, _predictor_for

    config = BenchmarkConfig(predictor="p/default", extra_predictors={"autos/v": "p/v"})
    assert _predictor_for("force@learned", config) == "p/default"
    assert _predictor_for("autos/v", config) == "p/v" and _predictor_for("autos", config) == "p/default"
    assert _predictor_for("force", config) is None and _predictor_for("snip@erk", config) is None
