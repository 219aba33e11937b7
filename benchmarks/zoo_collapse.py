"""Layer collapse across the conformance zoo: how many prunable tensors each criterion empties at 90% and 98%.

```
python benchmarks/zoo_collapse.py [--models resnet18 gpt2 ...] [--criteria snip synflow ...] [--sparsities 0.9 0.98]
                                  [--budgets global] [--rounds 100] [--output benchmarks/results/zoo_collapse.md]
```

Every architecture of the conformance zoo (``tests/zoo/zoo_models.py``: timm CNNs and ViT/Mixer, transformers
encoders, decoders and encoder-decoders, plain torch models, all built from configs at tiny sizes, offline) is
scored once per criterion with one batch of random inputs and labels (the iterative criteria, SynFlow, Iter SNIP,
FORCE and NTK-SAP, once per sparsity: their scores depend on the target; every criterion with its paper defaults); the scores are selected under ``--budgets`` (default ``global``, the rule under which
a criterion can empty a tensor) at each sparsity, equal scores broken by ``|w0|`` as ``prune_at_init`` does. A cell
is ``emptied/total`` prunable tensors; ``+n`` adds the tensors that keep under 0.1% without being empty
(``autosparse_hf.guards.collapsed_tensors``); ``(t: k)`` says that ``k`` of the emptied tensors held a score as high
as the lowest kept one (emptied by the tie order, not by their scores). A criterion that fails on an architecture
shows ``error`` with the message below the table. Prints the table as Markdown and writes it to ``--output``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "zoo"))  # the zoo's builders are the test suite's
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")

import autosparse_hf as A  # noqa: E402
from autosparse_hf.criteria.synflow import SynFlowCriterion  # noqa: E402
from autosparse_hf.guards import collapsed_tensors  # noqa: E402

CRITERIA = ("random", "magnitude", "snip", "grasp", "synflow", "iter_snip", "force", "prospr", "ntksap")
# Criteria whose scores depend on the target sparsity (they prune towards it): scored once per sparsity.
ITERATIVE = {"synflow", "iter_snip", "force", "ntksap"}


def timm_version() -> str:
    from importlib import metadata

    return metadata.version("timm")


def transformers_version() -> str:
    from importlib import metadata

    return metadata.version("transformers")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from zoo_models import ZOO

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=[e.name for e in ZOO], help="Zoo architectures (names).")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), help="Criteria to score with.")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.98], help="Target sparsities.")
    parser.add_argument("--budgets", default="global", help="Selection rule: global, uniform or erk.")
    parser.add_argument("--rounds", type=int, default=100, help="SynFlow rounds (100 in the paper).")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "zoo_collapse.md"))
    return parser.parse_args(argv)


def emptied_by_ties(scores: dict[str, torch.Tensor], masks: A.MaskSet) -> int:
    """Emptied tensors holding a score as high as the lowest kept one: the tie order, not the criterion, removed them."""
    threshold = min(float(s[masks[n]].min()) for n, s in scores.items() if bool(masks[n].any()))
    return sum(1 for n, s in scores.items() if not bool(masks[n].any()) and float(s.max()) >= threshold)


def cell(scores: dict[str, torch.Tensor], masks: A.MaskSet) -> str:
    """``emptied/total``, ``+n`` nearly empty tensors, ``(t: k)`` when ties emptied ``k`` of them."""
    collapsed = collapsed_tensors(masks)
    emptied = sum(1 for d in collapsed.values() if d == 0.0)
    near = len(collapsed) - emptied
    ties = emptied_by_ties(scores, masks)
    return f"{emptied}/{len(masks)}" + (f" +{near}" if near else "") + (f" (t: {ties})" if ties else "")


def criterion_for(name: str, rounds: int) -> str | SynFlowCriterion:
    return SynFlowCriterion(rounds=rounds, progress=False) if name == "synflow" else name


def score_row(entry, criteria: Sequence[str], sparsities: Sequence[float], budgets: str, rounds: int,
              errors: list[str]) -> tuple[list[str], float]:
    """The cells of one architecture (criterion-major, then sparsity) and its scoring wall time."""
    cells, start = [], time.perf_counter()
    batches = entry.batches()
    model = entry.build()
    # What prune_at_init breaks equal scores by: the initial magnitude.
    magnitudes = {n: p.param.detach().abs() for n, p in A.get_prunable_parameters(model).items()}
    for criterion in criteria:
        scores = None
        for sparsity in sparsities:
            try:
                if scores is None or criterion in ITERATIVE:
                    scores = A.compute_scores(model, criterion_for(criterion, rounds), dataloader=batches,
                                              sparsity=sparsity)
                masks = A.select_masks(scores, sparsity, scope=budgets, tie_break=magnitudes)
                cells.append(cell(scores, masks))
            except Exception as err:  # noqa: BLE001  (a failing criterion is a result of the table)
                message = str(err).splitlines()[0][:300] if str(err) else ""
                errors.append(f"{entry.name} / {criterion} / {sparsity:g}: {type(err).__name__}: {message}")
                cells.append(f"error [{len(errors)}]")
    return cells, time.perf_counter() - start


def markdown(rows: list[list[str]], criteria: Sequence[str], sparsities: Sequence[float]) -> str:
    header = ["architecture", "family", "tensors"] + [f"{c} {100 * s:g}%" for c in criteria for s in sparsities]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    from zoo_models import ZOO_BY_NAME

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, errors, total = [], [], time.perf_counter()
    for name in args.models:
        entry = ZOO_BY_NAME[name]
        tensors = len(A.get_prunable_parameters(entry.build()))
        cells, seconds = score_row(entry, args.criteria, args.sparsities, args.budgets, args.rounds, errors)
        rows.append([name, entry.family, str(tensors), *cells])
        print(f"{name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    command = "python benchmarks/zoo_collapse.py" + "".join(f" {a}" for a in argv or [])
    text = "\n".join([
        f"Tensors emptied (`emptied/total`; `+n` keep under 0.1%; `(t: k)` emptied by ties) under `{args.budgets}` "
        f"budgets (ties broken by |w0|), one batch of random inputs, SynFlow {args.rounds} rounds; `{command}`, "
        f"torch {torch.__version__}, timm {timm_version()}, transformers {transformers_version()}, "
        f"{time.perf_counter() - total:.0f} s on {args.threads} thread(s).",
        "",
        markdown(rows, args.criteria, args.sparsities),
        *([""] + [f"[{i}] {e}" for i, e in enumerate(errors, 1)] if errors else []),
        "",
    ])
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
