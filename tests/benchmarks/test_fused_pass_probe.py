"""The fused-pass probe (benchmarks/fused_pass_probe.py) on a tiny model: where it can compile its kernel, the kernel
returns the library's pass's positions, keys and maxima bit for bit (the probe asserts it before timing; timm's
zero-initialized batch-norm scales give many scores of exactly 0.0, so the bracket's key 0 and its cut are exercised),
and otherwise the probe says why it did not run. Speed is never checked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).resolve().parents[2] / "benchmarks" / "fused_pass_probe.py"


def test_fused_pass_probe_matches_the_library_pass(tmp_path: Path) -> None:
    output = tmp_path / "probe.json"
    flags = ["--model", "resnet10t", "--image_size", "32", "--repeats", "1", "--threads", "1", "--output", str(output)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(PROBE), *flags], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    if "not run:" in done.stdout:  # no C compiler or no AVX-512 here: nothing to compare
        assert not output.exists()
        return
    result = json.loads(output.read_text())["results"]
    assert "identical positions, keys and maxima" in done.stdout
    assert result["candidates"] > 0 and result["prunable_weights"] > result["candidates"]
    assert all(math.isfinite(result[k]) and result[k] > 0 for k in ("numpy_pass_ms", "fused_pass_ms"))
