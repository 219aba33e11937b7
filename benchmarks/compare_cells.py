"""Compare the cells of two benchmark output folders (every ``cells.jsonl`` below each), cell by cell.

    python benchmarks/compare_cells.py outputs/relayout-old outputs/relayout-new

Prints one line per (method, sparsity, seed) with both accuracies and whether the whole cell (accuracy, loss,
achieved sparsity, per-layer densities) is identical; exits 1 when any cell differs or is missing on one side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_cells(root: Path) -> dict[tuple[str, float, int], dict]:
    cells = {}
    for path in sorted(root.rglob("cells.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            cells[(row["criterion"], row["sparsity"], row["seed"])] = row
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    a, b = read_cells(args.first), read_cells(args.second)
    keys = sorted(set(a) | set(b))
    identical = 0
    for key in keys:
        x, y = a.get(key), b.get(key)
        same = x == y
        identical += same
        acc = lambda row: f"{row['accuracy']:.4f}" if row else "missing"  # noqa: E731
        print(f"{key[0]:34s} {100 * key[1]:5.1f}% seed {key[2]}: {acc(x)} / {acc(y)} {'identical' if same else 'DIFFERENT'}")
    print(f"{identical} of {len(keys)} cells identical")
    return 0 if identical == len(keys) else 1


if __name__ == "__main__":
    sys.exit(main())
