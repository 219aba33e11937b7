"""``--config`` YAML values are type-checked against the dataclass fields (issue 17, item 11): no bool where an int
is meant, no string (or scalar) where a list is meant, errors naming the file, the key and the value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from autosparse_hf.cli import parse_recipe_args
from autosparse_hf.irp.config import IRPConfig
from autosparse_hf.irp.runner import IRPRunArguments
from autosparse_hf.predictor.training import AutoSTrainingArguments
from autosparse_hf.training import TrainRecipe

ROOT = Path(__file__).resolve().parents[2]
IRP = [IRPRunArguments, IRPConfig, TrainRecipe]


@dataclass
class Example:
    """Every kind of field the recipes use."""

    steps: int = 3
    rate: float = 0.5
    name: str = "x"
    flag: bool = False
    widths: list[int] = field(default_factory=lambda: [4])
    ratios: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    limit: int | None = None
    label: str | None = None
    mode: Literal["a", "b"] = "a"


def parse(tmp_path: Path, text: str, classes: list[type] | None = None, *flags: str) -> tuple:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return parse_recipe_args(classes or [Example], ["--config", str(path), *flags])


def test_cycles_true_is_refused_naming_file_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"config\.yaml: 'cycles' is True \(bool\).*an integer"):
        parse(tmp_path, "cycles: true\n", IRP)


def test_a_scalar_where_a_list_is_meant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"config\.yaml: 'exclude' is 'fc3\.weight' \(str\).*a list.*\[fc3\.weight\]"):
        parse(tmp_path, "exclude: fc3.weight\n", IRP)
    with pytest.raises(ValueError, match=r"'include' is '\*bias' \(str\).*a list"):
        parse(tmp_path, "include: '*bias'\n", IRP)
    with pytest.raises(ValueError, match=r"'hidden_sizes' is 32 \(int\).*a list"):
        parse(tmp_path, "hidden_sizes: 32\n", [AutoSTrainingArguments])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps: '5'\n", r"'steps' is '5' \(str\).*an integer"),
        ("steps: 2.5\n", r"'steps' is 2\.5 \(float\).*an integer"),
        ("rate: true\n", r"'rate' is True \(bool\).*a number"),
        ("rate: fast\n", r"'rate' is 'fast' \(str\).*a number"),
        ("name: 12\n", r"'name' is 12 \(int\).*a string"),
        ("name: no\n", r"'name' is False \(bool\).*a string"),  # YAML 1.1: an unquoted no is false
        ("flag: 1\n", r"'flag' is 1 \(int\).*true or false"),
        ("flag: 'yes please'\n", r"'flag' is 'yes please' \(str\).*true or false"),
        ("widths: [4, true]\n", r"'widths\[1\]' is True \(bool\).*an integer"),
        ("widths: [4, '8']\n", r"'widths\[1\]' is '8' \(str\).*an integer"),
        ("names: [a, 3]\n", r"'names\[1\]' is 3 \(int\).*a string"),
        ("names: {a: 1}\n", r"'names' is \{'a': 1\} \(dict\).*a list"),
        ("limit: [3]\n", r"'limit' is \[3\] \(list\).*an integer or null"),
        ("label: 7\n", r"'label' is 7 \(int\).*a string or null"),
        ("mode: c\n", r"'mode' is 'c' \(str\).*one of \['a', 'b'\]"),
        ("steps: null\n", r"'steps' is None \(NoneType\).*an integer"),
    ],
)
def test_wrong_types_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"config\.yaml: {message}"):
        parse(tmp_path, text)


def test_right_types_parse_and_flags_still_override(tmp_path: Path) -> None:
    (example,) = parse(
        tmp_path,
        "steps: 7\nrate: 1\nname: run\nflag: true\nwidths: [8, 16]\nratios: [0.5, 1]\nnames: [a, b]\n"
        "limit: null\nlabel: null\nmode: b\n",
    )
    assert example == Example(7, 1.0, "run", True, [8, 16], [0.5, 1.0], ["a", "b"], None, None, "b")
    assert isinstance(example.rate, float) and all(isinstance(r, float) for r in example.ratios)
    (example,) = parse(tmp_path, "steps: 7\nwidths: [8]\n", None, "--steps", "9", "--widths", "1", "2")
    assert (example.steps, example.widths) == (9, [1, 2])


def test_exponent_floats_that_yaml_reads_as_strings_are_numbers(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads ``1e-3`` (no dot) as a string; a float field takes it as the number it spells."""
    (example,) = parse(tmp_path, "rate: 1e-3\nratios: [1e-2, 5E-1]\n")
    assert example.rate == 1e-3 and example.ratios == [1e-2, 0.5]
    (args,) = parse(tmp_path, "learning_rate: 3e-4\n", [AutoSTrainingArguments])
    assert args.learning_rate == 3e-4


def test_every_shipped_recipe_config_parses_strictly() -> None:
    from autosparse_hf.study.grid import PaIGridConfig
    from autosparse_hf.study.pipeline import PipelineArguments

    recipes = {
        "irp": IRP,
        "train_autos": [AutoSTrainingArguments],
        "prune": [PaIGridConfig, TrainRecipe],
        "autosparse": [PipelineArguments, IRPConfig, TrainRecipe],
    }
    checked = 0
    for path in sorted((ROOT / "recipes" / "configs").rglob("*.yaml")):
        if path.name.startswith("benchmark"):
            continue  # recipes/benchmark.py reads these (BenchmarkConfig), not parse_recipe_args
        errors = {}
        for name, classes in recipes.items():
            try:
                parse_recipe_args(classes, ["--config", str(path)])
            except ValueError as err:
                errors[name] = str(err)
            else:
                break
        else:
            raise AssertionError(f"{path} parses with no recipe: {errors}")
        checked += 1
    assert checked >= 20
