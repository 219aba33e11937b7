"""Every recipe's --help shows what it does, --config and every option's help; building its parser stays light.

The HfArgumentParser recipes expose ``ARGUMENTS`` (their dataclasses), ``recipes/benchmark.py`` its ``build_parser``.
The lightness test is behavioural, not a timing: building the parser (all ``--help`` needs) imports none of the heavy
libraries, which is what keeps ``--help`` faster than importing ``transformers.Trainer`` (benchmarks/help_speed.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py"))
HEAVY = ("torch", "timm", "datasets", "evaluate", "matplotlib")

BUILD_PARSER = """
import json, runpy, sys
ns = runpy.run_path(sys.argv[1], run_name="recipe_under_test")
if "ARGUMENTS" in ns:
    from autosparse_hf.cli import recipe_parser
    parser = recipe_parser(ns["ARGUMENTS"], ns["__doc__"])
else:
    parser = ns["build_parser"]()
parser.format_help()
print(json.dumps(sorted(m for m in sys.argv[2:] if m in sys.modules)))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


def _parser(recipe: str):  # noqa: ANN202
    ns = runpy.run_path(str(ROOT / "recipes" / f"{recipe}.py"), run_name="recipe_under_test")
    if "ARGUMENTS" in ns:
        from autosparse_hf.cli import recipe_parser

        return ns, recipe_parser(ns["ARGUMENTS"], ns["__doc__"])
    return ns, ns["build_parser"]()


def test_every_recipe_is_covered():
    assert {"irp", "train_autos", "prune", "autosparse", "benchmark"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_option_has_help(recipe):
    ns, parser = _parser(recipe)
    assert ns["__doc__"] and parser.description == ns["__doc__"]
    missing = [a.option_strings for a in parser._actions if not (a.help or "").strip()]
    assert not missing, f"{recipe}.py options without help: {missing}"
    for cls in ns.get("ARGUMENTS", ()):
        for f in dataclasses.fields(cls):
            assert not f.init or f.metadata.get("help"), f"{cls.__name__}.{f.name} has no metadata help"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_help_shows_the_description_config_and_every_field(recipe):
    path = ROOT / "recipes" / f"{recipe}.py"
    ns, parser = _parser(recipe)
    first_line = ns["__doc__"].strip().splitlines()[0]
    done = subprocess.run(
        [sys.executable, str(path), "--help"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert first_line in done.stdout and "--config FILE.yaml" in done.stdout
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings]
    assert flags and all(flag in done.stdout for flag in flags)


@pytest.mark.parametrize("recipe", RECIPES)
def test_building_the_parser_imports_nothing_heavy(recipe):
    done = subprocess.run(
        [sys.executable, "-c", BUILD_PARSER, str(ROOT / "recipes" / f"{recipe}.py"), *HEAVY],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == [], f"{recipe}.py imports {imported} to build its --help"
