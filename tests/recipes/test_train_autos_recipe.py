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


def test_help_lists_the_hub_fields():
    done = subprocess.run(
        [PYTHON, "recipes/train_autos.py", "--help"], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for flag in ("--push_to_hub", "--hub_model_id", "--hub_private_repo", "--config FILE.yaml"):
        assert flag in done.stdout


def test_an_offline_push_fails_before_any_training(tmp_path):
    import time

    from autosparse_hf.predictor.arguments import AutoSTrainingArguments

    with pytest.raises(ValueError, match="needs hub_model_id"):
        AutoSTrainingArguments(push_to_hub=True)
    with pytest.raises(ValueError, match="push_to_hub is a flag"):
        AutoSTrainingArguments(push_to_hub="me/autos")
    out = tmp_path / "never-written"
    scores = tmp_path / "no-scores-needed"  # never read: the push check comes first
    cmd = [PYTHON, "recipes/train_autos.py", "--push_to_hub", "true", "--hub_model_id", "me/autos",
           "--score_datasets", str(scores), "--output_dir", str(out)]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode != 0 and "offline" in done.stderr and "nothing was trained" in done.stderr
    assert "me/autos" in done.stderr and not out.exists() and time.perf_counter() - start < 60
    # "In the first second": the refusal comes before torch is even imported.
    probe = (
        "import sys\nfrom autosparse_hf.predictor.arguments import AutoSTrainingArguments\n"
        "try:\n    AutoSTrainingArguments(push_to_hub=True, hub_model_id='me/autos')\n"
        "except ConnectionError:\n    print('refused', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([PYTHON, "-c", probe], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.stdout.strip() == "refused False", done.stderr[-2000:]


def test_push_to_hub_uploads_the_predictor_after_training(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    from autosparse_hf.predictor.arguments import AutoSTrainingArguments
    from autosparse_hf.predictor.training import PREDICTOR_FILES, train_autos

    calls = []

    def create_repo(self, repo_id, **kwargs):  # noqa: ANN001, ANN202
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):  # noqa: ANN001, ANN202
        folder = Path(kwargs["folder_path"])
        calls.append(("upload_folder", kwargs["repo_id"], {**kwargs, "present": sorted(p.name for p in folder.iterdir())}))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the push is mocked: nothing leaves the machine
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    scores = save_synthetic_run(tmp_path / "irp", seed=0)
    out = tmp_path / "autos"
    args = AutoSTrainingArguments(
        score_datasets=[str(scores)], output_dir=str(out), epochs=1, batch_size=512, disable_tqdm=True,
        push_to_hub=True, hub_model_id="me/autos", hub_private_repo=True,
    )  # fmt: skip
    train_autos(args)
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    (_, repo, create), (_, repo_up, upload) = calls
    assert repo == repo_up == "me/autos" and create["private"] is True and create["repo_type"] == "model"
    assert Path(upload["folder_path"]) == out and set(upload["allow_patterns"]) == set(PREDICTOR_FILES)
    assert set(PREDICTOR_FILES) <= set(upload["present"])  # pushed after everything was written
