"""Accuracy and paired-difference tables of a benchmark target from its grids' ``cells.jsonl`` (complete or partial).

```
python benchmarks/grid_tables.py benchmarks/results/grids/baselines/lenet-mnist [--sparsities 0.5 0.9] [--seeds 1 2 3]
```

Reads every ``*/cells.jsonl`` under the target folder (one per grid: baselines, each predictor), keeps the cells of the
given sparsities and seeds, drops (method, sparsity) groups that lack a seed, and prints the tables the benchmark runner
writes (``autosparse_hf.study.grid.summarize`` / ``markdown_table`` and ``autosparse_hf.study.benchmark.paired_differences``
/ ``paired_table``): mean ± std accuracy, and each method minus the best baseline at each sparsity, paired by seed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from autosparse_hf.study.benchmark import paired_differences, paired_table
from autosparse_hf.study.grid import markdown_table, summarize


def read_cells(folder: Path, sparsities: set[float] | None, seeds: set[int] | None) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*/cells.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if sparsities and row["sparsity"] not in sparsities and row["sparsity"] != 0.0:
                continue
            if seeds and row["seed"] not in seeds:
                continue
            rows.append(row)
    return rows


def complete_groups(rows: list[dict], seeds: set[int]) -> tuple[list[dict], list[tuple[str, float]]]:
    """The rows of (method, sparsity) groups that have every seed, and the groups that do not."""
    have: dict[tuple[str, float], set[int]] = {}
    for row in rows:
        have.setdefault((row["criterion"], row["sparsity"]), set()).add(row["seed"])
    complete = [r for r in rows if have[(r["criterion"], r["sparsity"])] >= seeds]
    return complete, sorted(k for k, v in have.items() if not v >= seeds)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="A benchmark target folder (holding one folder per grid).")
    parser.add_argument("--sparsities", nargs="+", type=float, default=None, help="Keep only these sparsities.")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="Keep only these seeds (all required).")
    args = parser.parse_args(argv)
    rows = read_cells(args.folder, set(args.sparsities or []), set(args.seeds or []))
    seeds = set(args.seeds or {r["seed"] for r in rows})
    rows, incomplete = complete_groups(rows, seeds)
    text = "\n".join([
        f"cells: {len(rows)}" + (f"; left out, missing a seed: {incomplete}" if incomplete else ""),
        "",
        markdown_table(summarize(rows)),
        "",
        paired_table(paired_differences(rows)),
    ])
    print(text)
    return text


if __name__ == "__main__":
    main()
