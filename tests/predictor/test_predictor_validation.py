"""Predictors validate themselves (issue 17, items 7 and 9): a NaN/inf budget coefficient never hangs pruning, the
count split always terminates, ``load_predictor`` refuses non-finite weights and coefficients, and ``train_autos``
refuses to save a predictor with non-finite weights."""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from autos_utils import synthetic_run
from datasets import Dataset
from safetensors.torch import load_file, save_file

from autosparse_hf.features import LayerContext
from autosparse_hf.predictor import AutoSConfig, AutoSModel, load_predictor
from autosparse_hf.predictor.budgets import BUDGET_FEATURES, predict_layer_counts
from autosparse_hf.predictor.training import AutoSTrainingArguments, train_autos


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM interrupts a pure-Python loop between bytecodes."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def layers() -> list[LayerContext]:
    sizes = [(784, 300), (300, 100), (100, 10)]
    return [
        LayerContext(name=f"fc{i}.weight", kind="linear", fan_in=a, fan_out=b, depth=i, relative_depth=i / 2,
                     numel=a * b, shape=(b, a))
        for i, (a, b) in enumerate(sizes)
    ]


def budget_model(coef: list[float] | None = None) -> dict:
    coef = coef if coef is not None else [0.3, -0.1, 0.05, -0.2, 0.4, 0.0, 0.1, 0.02, -0.05]
    return {"features": list(BUDGET_FEATURES), "coef": coef, "ridge": 0.01, "rmse_logit": 0.1, "points": 30}


def with_coef(index: int, value: float) -> dict:
    model = budget_model()
    model["coef"][index] = value
    return model


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("index", [0, 3, 8])
def test_a_non_finite_coefficient_is_refused_not_a_hang(bad: float, index: int) -> None:
    with deadline(20), pytest.raises(ValueError, match=rf"coef\[{index}\] \({BUDGET_FEATURES[index]}\).*{bad}"):
        predict_layer_counts(with_coef(index, bad), layers(), 0.1)


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ({"coef": [0.0] * 9}, "features"),
        ({"features": list(BUDGET_FEATURES)}, "coef"),
        ({**budget_model(), "features": list(reversed(BUDGET_FEATURES))}, "features"),
        ({**budget_model(), "coef": [0.0] * 8}, r"coef.*9 numbers.*got 8"),
        ({**budget_model(), "coef": "0.1, 0.2"}, "coef"),
        ({**budget_model(), "coef": [0.0] * 8 + ["1"]}, r"coef\[8\]"),
        ({**budget_model(), "coef": [0.0] * 8 + [True]}, r"coef\[8\]"),
        ([0.0] * 9, "object"),
    ],
)
def test_a_malformed_budget_model_is_refused(model: object, problem: str) -> None:
    with deadline(20), pytest.raises(ValueError, match=problem):
        predict_layer_counts(model, layers(), 0.1)


@pytest.mark.parametrize("density", [math.nan, math.inf, 0.0, -0.5, 1.5])
def test_a_density_outside_0_1_is_refused(density: float) -> None:
    with deadline(20), pytest.raises(ValueError, match="density"):
        predict_layer_counts(budget_model(), layers(), density)


@pytest.mark.parametrize(
    "coef",
    [
        [-1e4, 0, 0, 0, 0, 0, 0, 0, 0],  # every tensor's logit far below the bisection's old bracket
        [1e4, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1e6, 0, 0, 0, 0, 0],  # logits spread over millions: all-or-nothing tensors
        [0, 0, 0, 1e300, 0, 0, 0, 0, 0],
        [1e300, 0, 0, 0, 0, 0, 0, 0, 0],
    ],
)
def test_extreme_finite_coefficients_still_give_exact_counts_quickly(coef: list[float]) -> None:
    big = [
        LayerContext(name=f"l{i}", kind="linear", fan_in=2000, fan_out=1000, depth=i, relative_depth=i / 9,
                     numel=2_000_000, shape=(1000, 2000))
        for i in range(10)
    ]
    total = sum(layer.numel for layer in big)
    start = time.perf_counter()
    with deadline(20):
        counts = predict_layer_counts(budget_model([float(c) for c in coef]), big, 0.37)
    assert time.perf_counter() - start < 2.0
    assert sum(counts.values()) == round(0.37 * total)
    assert all(1 <= counts[layer.name] <= layer.numel for layer in big)


def test_a_logit_overflowing_to_inf_is_refused() -> None:
    # Each coefficient is finite, the logit of a tensor is not: 1e308 * log(fan_in) overflows.
    with deadline(20), pytest.raises(ValueError, match=r"logit.*fc\d\.weight"):
        predict_layer_counts(with_coef(1, 1e308), layers(), 0.1)


@pytest.mark.parametrize(
    ("density", "expected"),
    [
        (0.01, (1949, 639, 74)),
        (0.1, (20890, 5341, 389)),
        (0.5, (113085, 19205, 810)),
        (0.9, (210587, 28028, 965)),
    ],
)
def test_ordinary_predictions_are_unchanged(density: float, expected: tuple[int, ...]) -> None:
    """The split a sane model gives is the one the earlier code gave (numbers computed before the change)."""
    counts = predict_layer_counts(budget_model(), layers(), density)
    assert tuple(counts.values()) == expected


@pytest.fixture
def saved_predictor(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = AutoSModel(AutoSConfig(hidden_sizes=(8,), budget_model=budget_model()))
    model.save_pretrained(tmp_path)
    return tmp_path


def test_a_valid_predictor_loads(saved_predictor: Path) -> None:
    assert load_predictor(saved_predictor).config.budget_model["coef"] == budget_model()["coef"]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_weight_is_refused_naming_file_and_tensor(saved_predictor: Path, bad: float) -> None:
    weights = load_file(str(saved_predictor / "model.safetensors"))
    name = next(n for n, t in weights.items() if t.dtype.is_floating_point and t.dim() == 2)
    weights[name] = weights[name].clone()
    weights[name][0, 0] = bad
    save_file(weights, str(saved_predictor / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"model\.safetensors.*{name}.*1 non-finite"):
        load_predictor(saved_predictor)


@pytest.mark.parametrize("field", ["budget_model", "feature_mean", "feature_std"])
def test_a_non_finite_config_value_is_refused_naming_file_and_field(saved_predictor: Path, field: str) -> None:
    path = saved_predictor / "config.json"
    config = json.loads(path.read_text())
    if field == "budget_model":
        config["budget_model"]["coef"][2] = math.nan  # json writes NaN, and reads it back
        expected = r"config\.json.*budget_model.*coef\[2\] \(log_fan_out\)"
    else:
        config[field][1] = math.inf
        expected = rf"config\.json.*{field}\[1\]"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=expected):
        load_predictor(saved_predictor)


def test_an_in_memory_predictor_with_nan_weights_is_refused() -> None:
    model = AutoSModel(AutoSConfig(hidden_sizes=(8,)))
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    with pytest.raises(ValueError, match="non-finite"):
        load_predictor(model)


def test_train_autos_refuses_to_save_a_predictor_with_nan_weights(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from autosparse_hf.predictor import training

    # Non-finite rows are refused before training now; without that check, the predictor guard must still hold.
    monkeypatch.setattr(training, "check_score_dataset", lambda dataset, source: None)
    _, _, _, dataset, _ = synthetic_run(seed=0)
    table = dataset.data.table
    w0 = table.column("w0").to_numpy().copy()
    w0[::7] = np.nan  # what an unchecked in-memory dataset feeds in: the feature statistics become NaN
    bad = Dataset(table.set_column(table.column_names.index("w0"), "w0", pa.array(w0)), info=dataset.info.copy())
    args = AutoSTrainingArguments(
        output_dir=str(tmp_path / "p"), eval_split="layers", epochs=1.0, batch_size=512, disable_tqdm=True,
        target="survival", budgets="none", balance_layers=False, within_layer="predictor",
    )
    with pytest.raises(ValueError, match=r"non-finite.*'[\w.]+'|'[\w.]+'.*non-finite"):
        train_autos(args, bad)
    assert not (tmp_path / "p" / "model.safetensors").exists()


@pytest.mark.parametrize("path", ["/abs/missing-predictor", "./missing", "outputs/runs/missing"])
def test_a_missing_folder_is_named_not_blamed_on_the_hub(path):
    from autosparse_hf import AutoSCallback

    with pytest.raises(FileNotFoundError, match="no such AutoS predictor folder"):
        AutoSCallback(predictor=path)


def _with_column(dataset: Dataset, name: str, change) -> Dataset:  # noqa: ANN001
    """``dataset`` (schema version kept) with one row of column ``name`` changed by ``change(values)``."""
    table = dataset.data.table
    values = table.column(name).to_numpy().copy()
    change(values)
    column = pa.array(values, type=table.schema.field(name).type)
    return Dataset(table.set_column(table.column_names.index(name), name, column), info=dataset.info.copy())


def _in_memory_args(output_dir: Path) -> AutoSTrainingArguments:
    return AutoSTrainingArguments(
        output_dir=str(output_dir), eval_split="layers", epochs=1.0, batch_size=512, disable_tqdm=True,
        target="survival", budgets="none", balance_layers=False, within_layer="predictor",
    )


@pytest.mark.parametrize(
    ("column", "change", "problem"),
    [
        ("w0", lambda v: v.__setitem__(5, np.nan), r"column 'w0' has 1 non-finite value\(s\) \(first at row 5"),
        ("g0", lambda v: v.__setitem__(9, np.inf), r"column 'g0' has 1 non-finite value\(s\) \(first at row 9"),
        # A target contradicting cycle_pruned: training would learn inverted scores without a word.
        ("surviving_score", lambda v: v.__setitem__(7, 1.0 - v[7] if v[7] != 0.5 else 0.0),
         r"column 'surviving_score' has 1 row\(s\) that disagree with \(cycle_pruned - 1\) / cycles \(first at row 7"),
    ],
    ids=["nan-w0", "inf-g0", "inverted-surviving-score"],
)
def test_train_autos_validates_an_in_memory_dataset_like_one_from_disk(tmp_path: Path, column, change, problem) -> None:  # noqa: ANN001
    _, _, _, dataset, _ = synthetic_run(seed=0)
    bad = _with_column(dataset, column, change)
    with pytest.raises(ValueError, match=rf"the in-memory dataset given to train_autos: {problem}"):
        train_autos(_in_memory_args(tmp_path / "p"), bad)
    assert not (tmp_path / "p").exists()  # refused before training: nothing written


def test_train_autos_checks_the_schema_version_of_an_in_memory_dataset(tmp_path: Path) -> None:
    _, _, _, dataset, _ = synthetic_run(seed=0)
    info = dataset.info.copy()
    description = json.loads(info.description)
    info.description = json.dumps({**description, "autosparse_score_schema": 99})
    future = Dataset(dataset.data.table, info=info)
    with pytest.raises(ValueError, match="the in-memory dataset given to train_autos has score schema version 99"):
        train_autos(_in_memory_args(tmp_path / "p"), future)
