"""Tests of autosparse_hf.tasks: built-in offline tasks, reference models and the shipped accuracy metric."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import EvalPrediction, ViTConfig
from transformers.modeling_outputs import SequenceClassifierOutput

from autosparse_hf.tasks import (
    LeNet300100,
    SmallConvNet,
    TaskInfo,
    build_model,
    compute_metrics_for_classification,
    list_metrics,
    list_models,
    list_tasks,
    load_metric,
    load_task,
    task_info,
)
from autosparse_hf.tasks import datasets as task_datasets
from autosparse_hf.tasks.metrics import metric_path

TASKS = ["digits", "mnist", "mnist1d"]
SHAPES = {"mnist": (1, 28, 28), "mnist1d": (1, 40), "digits": (1, 8, 8)}
ROWS = {"mnist": 5000, "mnist1d": 5000, "digits": 1797}


def _column(split: datasets.Dataset, name: str) -> np.ndarray:
    # ``split[name]`` is a lazy Column in datasets >= 4; slicing formats the whole column at once.
    return split.with_format("numpy")[:][name]


def _row_hashes(split: datasets.Dataset) -> list[str]:
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in _column(split, "pixel_values")]


def _batch(name: str, batch_size: int = 8) -> dict[str, torch.Tensor]:
    return next(iter(DataLoader(load_task(name)["train"], batch_size=batch_size)))


# ------------------------------------------------------------------------------------------------------- datasets


def test_list_tasks_and_info() -> None:
    assert list_tasks() == TASKS
    for name in TASKS:
        info = task_info(name)
        assert isinstance(info, TaskInfo)
        assert info.num_classes == 10 and info.input_shape == SHAPES[name] and len(info.class_names) == 10
    assert task_info("mnist1d", final_seq_length=60).input_shape == (1, 60)
    with pytest.raises(ValueError, match="mnist1d"):
        task_info("cifar10")


@pytest.mark.parametrize("name", TASKS)
def test_builtin_task_splits_shapes_and_labels(name: str) -> None:
    task = load_task(name)
    assert set(task) == {"train", "test"}
    train, test = task["train"], task["test"]
    assert len(train) + len(test) == ROWS[name]
    assert len(test) == round(0.2 * ROWS[name])
    assert isinstance(train.features["labels"], datasets.ClassLabel)
    assert train.features["labels"].num_classes == 10
    assert train.features["pixel_values"].shape == SHAPES[name]

    batch = next(iter(DataLoader(train, batch_size=16)))
    assert set(batch) == {"pixel_values", "labels"}
    assert batch["pixel_values"].shape == (16, *SHAPES[name])
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.int64

    for split in (train, test):
        labels = _column(split, "labels")
        assert labels.min() >= 0 and labels.max() <= 9
        # Stratified: every class appears in each split in about its overall share (10% for these tasks).
        shares = np.bincount(labels, minlength=10) / len(labels)
        assert np.all(np.abs(shares - 0.1) < 0.05)
    # Rows are shuffled, not grouped by class.
    assert len(set(_column(train, "labels")[:50].tolist())) > 3


@pytest.mark.parametrize("name", ["mnist", "digits"])
def test_standardized_with_train_statistics(name: str) -> None:
    pixels = _column(load_task(name)["train"], "pixel_values").astype(np.float64)
    assert abs(pixels.mean()) < 1e-4
    assert abs(pixels.std() - 1.0) < 1e-3


def test_mnist_train_and_test_rows_do_not_overlap() -> None:
    task = load_task("mnist")
    train, test = set(_row_hashes(task["train"])), set(_row_hashes(task["test"]))
    assert len(train) == len(task["train"]) and len(test) == len(task["test"])
    assert not train & test


@pytest.mark.parametrize("name", TASKS)
def test_split_is_fixed_by_seed(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_task(name, seed=0)
    # Rebuild from scratch rather than read the in-memory cache, so the comparison tests the seeding itself.
    monkeypatch.setattr(task_datasets, "_CACHE", {})
    again = load_task(name, seed=0)
    other = load_task(name, seed=1)
    for split in ("train", "test"):
        assert _row_hashes(first[split]) == _row_hashes(again[split])
        assert np.array_equal(_column(first[split], "labels"), _column(again[split], "labels"))
    assert _row_hashes(first["test"]) != _row_hashes(other["test"])


def test_mnist_different_seed_changes_membership() -> None:
    # Not only the order: another seed puts other digits into the test split.
    a, b = load_task("mnist", seed=0), load_task("mnist", seed=1)
    assert len(a["test"]) == len(b["test"]) == 1000
    assert set(_column(a["test"], "labels").tolist()) == set(range(10))
    overlap = len(set(_row_hashes(a["test"])) & set(_row_hashes(b["test"])))
    assert overlap < 500  # about 20% expected by chance


def test_load_task_returns_independent_objects() -> None:
    first = load_task("digits")
    first["train"].set_format("numpy")
    assert isinstance(load_task("digits")["train"][0]["pixel_values"], torch.Tensor)


def test_mnist1d_is_generated_locally_without_touching_global_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_datasets, "_CACHE", {})
    py_state, np_state = random.getstate(), np.random.get_state()
    task = load_task("mnist1d", seed=3, num_samples=1000)
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state, strict=True))
    assert (len(task["train"]), len(task["test"])) == (800, 200)
    # The seed drives the generator too: the same rows for the same seed, other rows for a generator_seed.
    other = load_task("mnist1d", seed=3, num_samples=1000, generator_seed=42)
    assert _row_hashes(task["train"]) != _row_hashes(other["train"])
    with pytest.raises(TypeError, match="unknown mnist1d argument"):
        load_task("mnist1d", bogus=1)
    with pytest.raises(TypeError, match="takes no extra arguments"):
        load_task("mnist", num_samples=10)


@pytest.mark.parametrize("test_size", [0.0, 1.0, -0.1])
def test_invalid_test_size(test_size: float) -> None:
    with pytest.raises(ValueError, match="test_size"):
        load_task("digits", test_size=test_size)


def test_mnist_loads_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_datasets, "_CACHE", {})
    task_datasets._mnist_raw.cache_clear()
    start = time.perf_counter()
    load_task("mnist", seed=7)
    assert time.perf_counter() - start < 5.0


def test_unknown_task_offline_fails_fast_with_clear_message() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    start = time.perf_counter()
    with pytest.raises(ValueError) as excinfo:
        load_task("someone/no-such-dataset")
    assert time.perf_counter() - start < 5.0
    message = str(excinfo.value)
    assert "someone/no-such-dataset" in message and "offline" in message
    for name in TASKS:
        assert name in message


def test_fallback_loads_local_builder_and_cuts_test_split(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("x,labels\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    task = load_task("csv", seed=0, test_size=0.25, data_files=str(path))
    assert (len(task["train"]), len(task["test"])) == (15, 5)
    assert set(_column(task["train"], "x").tolist()).isdisjoint(_column(task["test"], "x").tolist())


# ------------------------------------------------------------------------------------------------------- models


def test_lenet_parameter_names() -> None:
    names = [name for name, _ in LeNet300100().named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    assert LeNet300100().fc1.in_features == 784 and LeNet300100((1, 40)).fc1.in_features == 40


@pytest.mark.parametrize("model_cls", [LeNet300100, SmallConvNet])
@pytest.mark.parametrize("name", TASKS)
def test_reference_model_forward_on_task_batches(model_cls: type[torch.nn.Module], name: str) -> None:
    torch.manual_seed(0)
    model = model_cls(input_shape=task_info(name).input_shape, num_classes=10)
    assert model.example_input_shape == SHAPES[name]
    batch = _batch(name)
    outputs = model(**batch)
    assert isinstance(outputs, SequenceClassifierOutput)
    assert outputs.logits.shape == (8, 10)
    torch.testing.assert_close(outputs.loss, torch.nn.functional.cross_entropy(outputs.logits, batch["labels"]))
    outputs.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model(pixel_values=batch["pixel_values"]).loss is None


def test_convnet_uses_conv1d_for_signals_and_rejects_other_ranks() -> None:
    assert isinstance(SmallConvNet((1, 40)).conv1, torch.nn.Conv1d)
    assert isinstance(SmallConvNet((1, 8, 8)).conv1, torch.nn.Conv2d)
    # The adaptive pool gives the classifier the same input size for 28x28 and 8x8 images.
    assert SmallConvNet((1, 28, 28)).fc.in_features == SmallConvNet((1, 8, 8)).fc.in_features
    with pytest.raises(ValueError, match="SmallConvNet"):
        SmallConvNet((784,))


def test_build_model_builtins_and_seed() -> None:
    assert list_models() == ["convnet", "lenet", "lenet300100"]
    assert isinstance(build_model("lenet300100", "mnist"), LeNet300100)
    assert isinstance(build_model("LeNet", task_info("digits")), LeNet300100)
    convnet = build_model("convnet", 3, input_shape=(1, 40))
    assert isinstance(convnet, SmallConvNet) and convnet.fc.out_features == 3

    rng_state = torch.get_rng_state()
    a, b = build_model("lenet", "mnist", seed=0), build_model("lenet", "mnist", seed=0)
    c = build_model("lenet", "mnist", seed=1)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's random stream is untouched
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name

    with pytest.raises(ValueError, match="input_shape"):
        build_model("lenet", 10)
    with pytest.raises(ValueError, match="only accepted for timm"):
        build_model("lenet", "mnist", patch_size=7)


def test_build_timm_model_on_mnist_batch() -> None:
    from autosparse_hf.families import TimmForImageClassification

    model = build_model("test_resnet", "mnist", seed=0)
    assert isinstance(model, TimmForImageClassification)
    assert model.example_input_shape == (1, 28, 28)
    assert model.model.num_classes == 10
    batch = _batch("mnist", batch_size=4)
    outputs = model(**batch)
    assert outputs.logits.shape == (4, 10)
    assert torch.isfinite(outputs.loss)

    # A ViT must know the image size; build_model passes img_size, and extra timm arguments go through.
    vit = build_model("test_vit", "mnist", patch_size=7)
    assert vit(**batch).logits.shape == (4, 10)

    with pytest.raises(ValueError, match="neither a built-in model"):
        build_model("no_such_model_xyz", "mnist")


def test_build_transformers_vit_from_config() -> None:
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=7,
        num_channels=1,
    )
    model = build_model(config, "mnist", seed=0)
    assert model.config.num_labels == 10 and model.config.id2label[3] == "3"
    assert config.num_labels == 2  # the caller's config is copied, not changed
    assert model.example_input_shape == (1, 28, 28)
    batch = _batch("mnist", batch_size=4)
    outputs = model(**batch)
    assert outputs.logits.shape == (4, 10)
    torch.testing.assert_close(outputs.loss, torch.nn.functional.cross_entropy(outputs.logits, batch["labels"]))


# ------------------------------------------------------------------------------------------------------- metrics


def test_shipped_accuracy_metric_values() -> None:
    assert list_metrics() == ["accuracy"]
    metric = load_metric("accuracy")
    assert metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"] == pytest.approx(2 / 3)
    assert metric.compute(predictions=[2, 2], references=[2, 2])["accuracy"] == 1.0
    assert metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], normalize=False)["accuracy"] == 2.0
    weighted = metric.compute(predictions=[0, 1], references=[0, 0], sample_weight=[3.0, 1.0])
    assert weighted["accuracy"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no shipped metric"):
        load_metric("bleu")


def test_shipped_metric_loads_offline_in_a_fresh_process() -> None:
    # A fresh interpreter with HF_HUB_OFFLINE=1 set before evaluate is imported: exactly what an offline user has.
    code = (
        "import evaluate, sys; m = evaluate.load(sys.argv[1]); "
        "print(m.compute(predictions=[0, 1, 1], references=[0, 1, 0])['accuracy'])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(metric_path("accuracy"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(2 / 3)


def test_compute_metrics_for_classification() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    labels = np.array([0, 1, 0])
    assert compute_metrics_for_classification(EvalPrediction(predictions=logits, label_ids=labels)) == {
        "accuracy": pytest.approx(2 / 3)
    }
    # Models that return more than logits give the Trainer a tuple; the logits come first.
    extra = np.zeros((3, 5))
    as_tuple = EvalPrediction(predictions=(logits, extra), label_ids=labels)
    assert compute_metrics_for_classification(as_tuple)["accuracy"] == pytest.approx(2 / 3)
    assert compute_metrics_for_classification((logits, labels))["accuracy"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------------------- Trainer


def test_reference_model_trains_and_evaluates_with_trainer(tmp_path) -> None:
    from transformers import Trainer, TrainingArguments

    task = load_task("digits")
    model = build_model("lenet300100", "digits", seed=0)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=30,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=256,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=task["train"],
        eval_dataset=task["test"],
        compute_metrics=compute_metrics_for_classification,
    )
    before = trainer.evaluate()["eval_accuracy"]
    trainer.train()
    after = trainer.evaluate()
    assert 0.0 <= before <= 1.0
    # 30 steps on 8x8 digits take a LeNet far above chance (0.1).
    assert after["eval_accuracy"] > 0.8 and after["eval_accuracy"] > before


def test_build_model_from_a_config_file_or_folder(tmp_path) -> None:
    """A transformers config given as a path (what `--model` of the recipes takes) builds that architecture."""
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=28,
              patch_size=7, num_channels=1).save_pretrained(tmp_path)
    for source in (tmp_path, tmp_path / "config.json"):
        model = build_model(str(source), "mnist", seed=0)
        assert type(model).__name__ == "ViTForImageClassification"
        assert model.config.hidden_size == 32 and model.config.num_labels == 10


def test_a_config_that_ships_code_is_refused_without_a_prompt(tmp_path):
    import json

    from autosparse_hf.tasks import build_model

    config = {"model_type": "someone-elses-model", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "configuration_x.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises((ValueError, OSError), match="trust_remote_code|remote code"):
        build_model(str(tmp_path), "mnist", seed=0)
