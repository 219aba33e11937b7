"""The README's Python blocks run as written (small sizes), so the quickstart cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_a_python_quickstart():
    blocks = python_blocks()
    assert blocks and "prune_at_init" in blocks[0] and "IRPCallback" in blocks[0] and "AutoSCallback" in blocks[0]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs_as_written(index, tmp_path):
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(python_blocks()[index])
    env = {**os.environ, "AUTOSPARSE_SMALL": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "outputs in" in result.stdout
