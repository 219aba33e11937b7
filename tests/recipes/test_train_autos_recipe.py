"""``recipes/train_autos.py`` and ``recipes/prune.py --criteria autos`` end to end, as subprocesses, offline."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from autos_utils import FEATURE_NUM_BATCHES, NUM_WEIGHTS, save_synthetic_run

from autosparse_hf.predictor import load_predictor

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
LENET_DIGITS_WEIGHTS = 64 * 300 + 300 * 100 + 100 * 10


def _run(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run([PYTHON, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("recipe")
    scores = save_synthetic_run(root / "irp", seed=0)
    out = root / "autos"
    result = _run(
        [
            "recipes/train_autos.py",
            "--score_datasets",
            str(scores),
            "--output_dir",
            str(out),
            "--epochs",
            "1",
            "--batch_size",
            "512",
            "--disable_tqdm",
            "true",
        ]
    )
    return out, result


def test_train_autos_recipe_writes_a_loadable_predictor(trained):
    out, result = trained
    assert {"config.json", "model.safetensors", "metrics.json", "loss_curve.png"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin"))
    report = json.loads((out / "metrics.json").read_text())
    # One run: the split falls back to held-out tensors (the middle one), never rows of a tensor trained on.
    assert report["eval_tensors"] == ["fc2.weight"]
    assert report["train_rows"] + report["eval_rows"] == NUM_WEIGHTS
    assert report["arguments"]["epochs"] == 1.0 and report["arguments"]["batch_size"] == 512
    for key in ("autos_spearman", "magnitude_spearman", "snip_spearman", "autos_overlap@10%"):
        assert key in report["metrics"]
    assert "| autos |" in result.stdout and str(out) in result.stdout
    predictor = load_predictor(out)
    assert predictor.config.feature_num_batches == FEATURE_NUM_BATCHES
    assert predictor.config.training_sources == ["run-seed0"]


def test_prune_recipe_with_autos(trained, tmp_path):
    predictor, _ = trained
    out = tmp_path / "grid"
    _run(
        [
            "recipes/prune.py",
            "--criteria",
            "autos",
            "snip",
            "--predictor",
            str(predictor),
            "--sparsities",
            "0.9",
            "--seeds",
            "1",
            "--task",
            "digits",
            "--epochs",
            "1",
            "--batch_size",
            "128",
            "--include_dense",
            "false",
            "--output_dir",
            str(out),
        ]
    )
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["criterion"] for r in rows) == ["autos", "snip"]
    for row in rows:
        assert float(row["sparsity"]) == 0.9
        assert abs(float(row["achieved_sparsity"]) - 0.9) <= 1 / LENET_DIGITS_WEIGHTS
        assert 0.0 <= float(row["accuracy"]) <= 1.0
    assert "autos" in (out / "results.md").read_text()


def test_recipe_config_file_parses():
    from autosparse_hf.cli import parse_recipe_args
    from autosparse_hf.predictor.training import AutoSTrainingArguments

    (args,) = parse_recipe_args(
        [AutoSTrainingArguments], ["--config", str(ROOT / "recipes/configs/autos_default.yaml"), "--loss", "ranking"]
    )
    assert args.loss == "ranking" and args.architecture == "mlp" and args.score_datasets == ["outputs/irp/irp"]
