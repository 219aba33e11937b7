"""The fused-pass probe (benchmarks/fused_pass_probe.py) on a tiny model: where it can compile its kernel, the kernel
returns the library's pass's positions, keys and maxima bit for bit (the probe asserts it before timing; timm's
zero-initialized batch-norm scales give many scores of exactly 0.0, so the bracket's key 0 and its cut are exercised),
and otherwise the probe says why it did not run. Speed is never checked.

The probe is a separate process, started right after collection in a full run (``start_early``, see
``tests/conftest.py``), so that it runs beside the in-process tests; the test only waits for it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.early_start import selected_items

PROBE = Path(__file__).resolve().parents[2] / "benchmarks" / "fused_pass_probe.py"
FLAGS = ["--model", "resnet10t", "--image_size", "32", "--repeats", "1", "--threads", "1"]
_STARTED: dict[str, tuple[subprocess.Popen, Path]] = {}


def start_early(session: pytest.Session, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Start the probe (once) if its test is selected."""
    if _STARTED or not selected_items(session, __name__):
        return
    folder = tmp_path_factory.mktemp("fused_pass_probe")
    output = folder / "probe.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(
        [sys.executable, str(PROBE), *FLAGS, "--output", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=folder,
    )  # fmt: skip
    _STARTED["probe"] = (process, output)


def test_fused_pass_probe_matches_the_library_pass(request: pytest.FixtureRequest, tmp_path_factory) -> None:  # noqa: ANN001
    start_early(request.session, tmp_path_factory)
    process, output = _STARTED["probe"]
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-4000:]
    if "not run:" in stdout:  # no C compiler or no AVX-512 here: nothing to compare
        assert not output.exists()
        return
    result = json.loads(output.read_text())["results"]
    assert "identical positions, keys and maxima" in stdout
    assert result["candidates"] > 0 and result["prunable_weights"] > result["candidates"]
    assert all(math.isfinite(result[k]) and result[k] > 0 for k in ("numpy_pass_ms", "fused_pass_ms"))
