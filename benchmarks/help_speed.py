"""Recipe ``--help`` speed: wall time of ``python recipes/<name>.py --help`` against importing ``transformers.Trainer``.

A user's first contact with a recipe is ``--help``; it should come back no slower than importing the Trainer alone
(issue 16), which the recipes' argument dataclasses do not need. Each command runs in a fresh interpreter; the
reference ``python -c "import transformers; transformers.Trainer"`` and every recipe's ``--help`` are run
``--repeats`` times, interleaved round by round (the order rotates every round, so no command is always first on a
loaded machine), after ``--warmup`` untimed rounds that fill the file cache. Reported per recipe: the median wall time
and its ratio to the reference's median, measured in the same run.

Target: every recipe's ``--help`` at most the Trainer import (the slowest recipe's ratio <= 1).

    python benchmarks/help_speed.py [--recipes irp train_autos ...] [--repeats 3] [--warmup 1]

Writes the JSON result (``--output``, default ``benchmarks/results/help_speed.json``) and the same table as Markdown
next to it (``help_speed.md``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as common

ROOT = common.BENCHMARKS_DIR.parent
RECIPES_DIR = ROOT / "recipes"
REFERENCE_CODE = "import transformers; transformers.Trainer"
REFERENCE = "Trainer import"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipes", nargs="*", default=None, help="Recipe names (recipes/<name>.py); default: every recipe."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of every command (median reported).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed rounds first (file cache).")
    parser.add_argument("--timeout", type=float, default=300.0, help="Seconds one command may take.")
    parser.add_argument("--output", default=common.default_output("help_speed"), help="JSON result file.")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.recipes is None:
        args.recipes = sorted(p.stem for p in RECIPES_DIR.glob("*.py"))
    missing = [r for r in args.recipes if not (RECIPES_DIR / f"{r}.py").is_file()]
    if missing:
        parser.error(f"no recipe {missing} in {RECIPES_DIR}")
    return args


def commands(recipes: list[str]) -> dict[str, list[str]]:
    """Label -> argv: the reference first, then ``recipes/<name>.py --help`` per recipe."""
    result = {REFERENCE: [sys.executable, "-c", REFERENCE_CODE]}
    for name in recipes:
        result[f"{name}.py --help"] = [sys.executable, str(RECIPES_DIR / f"{name}.py"), "--help"]
    return result


def run_once(argv: list[str], timeout: float) -> float:
    """Wall seconds of one fresh interpreter running ``argv`` (from the repository root); a failure raises."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def measure(cmds: dict[str, list[str]], repeats: int, warmup: int, timeout: float) -> dict[str, list[float]]:
    """Timed runs per label, interleaved: round r runs every command once, starting at a rotating offset."""
    labels = list(cmds)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(warmup + repeats):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            seconds = run_once(cmds[label], timeout)
            if r >= warmup:
                times[label].append(seconds)
    return times


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cmds = commands(args.recipes)
    times = measure(cmds, args.repeats, args.warmup, args.timeout)
    reference = common.median(times[REFERENCE])
    results: dict = {
        "reference_command": f'python -c "{REFERENCE_CODE}"',
        "reference_median_s": reference,
        "reference_runs_s": times[REFERENCE],
        "recipes": {},
    }
    rows = [[f'python -c "{REFERENCE_CODE}"', reference, 1.0, " ".join(common.fmt(t) for t in times[REFERENCE])]]
    for label, argv_ in cmds.items():
        if label == REFERENCE:
            continue
        name = Path(argv_[1]).stem
        med = common.median(times[label])
        results["recipes"][name] = {"median_s": med, "runs_s": times[label], "ratio_to_trainer_import": med / reference}
        runs = " ".join(common.fmt(t) for t in times[label])
        rows.append([f"python recipes/{name}.py --help", med, med / reference, runs])
    slowest = max(results["recipes"], key=lambda n: results["recipes"][n]["ratio_to_trainer_import"])
    results["slowest_recipe"] = slowest
    worst = results["recipes"][slowest]["ratio_to_trainer_import"]
    target = common.target_entry(
        f"every recipe's --help <= the Trainer import (slowest: {slowest}.py)",
        worst,
        1.0,
        "x Trainer import",
        higher_is_better=False,
    )
    table = common.markdown_table(["command", "median s", "ratio to Trainer import", "runs s"], rows)
    config = dict(vars(args))
    payload = common.report("help_speed", config, results, target, table, args.output)
    env = payload["environment"]
    note = (
        f"Median of {args.repeats} interleaved runs each (after {args.warmup} warm-up round(s)), fresh interpreters, "
        f"Python {env['python']}, {env['cpu_count']} CPUs, load average {env['load_average']}, {env['time']}."
    )
    md = "\n\n".join(["## help_speed", table, note, common.target_line(target)]) + "\n"
    Path(args.output).with_suffix(".md").write_text(md)
    return payload


if __name__ == "__main__":
    main()
