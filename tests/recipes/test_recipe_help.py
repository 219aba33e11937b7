"""Every HfArgumentParser recipe's --help shows what it does and the --config option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ["irp", "train_autos", "prune", "autosparse"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_help_shows_the_description_and_config(recipe):
    path = ROOT / "recipes" / f"{recipe}.py"
    first_line = path.read_text().split('"""')[1].strip().splitlines()[0]
    done = subprocess.run([sys.executable, str(path), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert first_line in done.stdout and "--config FILE.yaml" in done.stdout
