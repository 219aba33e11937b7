"""SynFlow's cost against its own forward/backward passes alone, globally and inside learned layer budgets.

SynFlow (100 rounds by default) must run one forward and one backward pass per round; everything else (scoring the
weights, choosing the survivors, pruning, bookkeeping, the float64 scores) is overhead. In one process, interleaved
and repeated, this times on a freshly built timm model (default ``resnet18``, 1000 classes):

- ``passes``: the ``--rounds`` SynFlow passes alone, as ``SynFlowCriterion`` runs them (its input from the family
  adapter, eval mode, absolute weights, only the prunable parameters requiring gradients, gradients cleared before
  each pass), without scoring or selection;
- ``global``: ``compute_scores(model, SynFlowCriterion(rounds), dataloader=[batch], sparsity)`` (one threshold);
- ``budgets``: the default AutoS path, SynFlow inside learned layer budgets: the budget prediction
  (``LearnedAllocation.allocate``, an untrained budget model with zero coefficients, which costs what a trained one
  does) plus ``compute_scores`` of SynFlow inside those counts.

Each repeat runs the three in a rotated order and gives the ratios ``global / passes`` and ``budgets / passes`` of
that repeat; the medians over repeats are reported, in wall time and in the process's CPU time (steadier on a shared
machine). The time SynFlow spends in its own passes is measured too (its ``_backward``), so its overhead splits
into "passes" and "everything else".

Target (issue 14): both ratios <= 1.5.

    python benchmarks/synflow_overhead.py [--model resnet18] [--rounds 100] [--sparsity 0.9] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as common
import torch

TARGET_RATIO = 1.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_scoring_model_arguments(parser)
    parser.add_argument("--rounds", type=int, default=100, help="SynFlow rounds (100: the library's default).")
    parser.add_argument("--sparsity", type=float, default=0.9, help="Target sparsity of the scoring.")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved repeats (medians reported).")
    parser.add_argument("--target_ratio", type=float, default=TARGET_RATIO, help="Target: SynFlow / passes alone.")
    parser.add_argument("--seed", type=int, default=0)
    common.add_threads_argument(parser)
    parser.add_argument("--output", default=common.default_output("synflow_overhead"), help="JSON result file.")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1 or not 0.0 <= args.sparsity < 1.0:
        parser.error("--repeats and --rounds must be >= 1, --sparsity in [0, 1)")
    return args


def clocked(fn: Callable[[], Any]) -> dict[str, float]:
    """Wall and CPU seconds of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    import timm

    from autosparse_hf import AutoSConfig, AutoSModel, compute_scores, get_prunable_parameters
    from autosparse_hf.allocation.learned import LearnedAllocation
    from autosparse_hf.criteria.synflow import SynFlowCriterion
    from autosparse_hf.predictor.budgets import BUDGET_FEATURES

    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
    params = get_prunable_parameters(model)
    numel = sum(p.param.numel() for p in params.values())
    g = torch.Generator().manual_seed(args.seed)
    batch = {
        "pixel_values": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g),
        "labels": torch.randint(0, args.num_classes, (args.batch_size,), generator=g),
    }
    budget_model = {"features": list(BUDGET_FEATURES), "coef": [0.0] * len(BUDGET_FEATURES)}
    allocation = LearnedAllocation(AutoSModel(AutoSConfig(budget_model=budget_model, within_layer="synflow")))
    criterion = SynFlowCriterion(rounds=args.rounds, progress=False)

    # The time SynFlow spends in its own passes (its _backward, a static method), in this process only.
    inside: dict[str, float] = {}
    original = SynFlowCriterion.__dict__["_backward"].__func__

    def timed_backward(context: Any, inputs: Any) -> bool:
        start = time.perf_counter()
        try:
            return original(context, inputs)
        finally:
            inside["passes_s"] = inside.get("passes_s", 0.0) + time.perf_counter() - start
            inside["passes"] = inside.get("passes", 0) + 1

    def synflow_global() -> None:
        compute_scores(model, criterion, dataloader=[batch], sparsity=args.sparsity, params=params)

    def synflow_budgets() -> None:
        counts = allocation.allocate(params, args.sparsity, type(model).__name__).counts
        compute_scores(model, criterion, dataloader=[batch], sparsity=args.sparsity, params=params, budgets=counts)

    passes = common.synflow_passes(model, batch, args.rounds)
    cases = {"passes": passes, "global": synflow_global, "budgets": synflow_budgets}
    order = list(cases)
    runs: list[dict[str, Any]] = []
    SynFlowCriterion._backward = staticmethod(timed_backward)  # type: ignore[method-assign]
    try:
        for repeat in range(args.repeats):
            run: dict[str, Any] = {"order": order[repeat % 3 :] + order[: repeat % 3]}
            for name in run["order"]:
                inside.clear()
                run[name] = clocked(cases[name])
                if name != "passes":
                    run[name]["passes_inside_s"] = inside.get("passes_s", 0.0)
                    run[name]["passes_inside"] = inside.get("passes", 0)
            for name in ("global", "budgets"):
                for clock in ("wall_s", "cpu_s"):
                    run[f"ratio_{name}_{clock.removesuffix('_s')}"] = run[name][clock] / run["passes"][clock]
            runs.append(run)
            print(
                f"repeat {repeat + 1}/{args.repeats}: passes {run['passes']['wall_s']:.2f} s, global "
                f"{run['global']['wall_s']:.2f} s ({run['ratio_global_wall']:.2f}x), budgets {run['budgets']['wall_s']:.2f}"
                f" s ({run['ratio_budgets_wall']:.2f}x)",
                flush=True,
            )
    finally:
        SynFlowCriterion._backward = staticmethod(original)  # type: ignore[method-assign]

    def med(path: Callable[[dict], float]) -> float:
        return common.median([path(r) for r in runs])

    results: dict[str, Any] = {
        "model": args.model,
        "prunable_weights": numel,
        "prunable_tensors": len(params),
        "rounds": args.rounds,
        "sparsity": args.sparsity,
        "runs": runs,
    }
    for name in ("passes", "global", "budgets"):
        results[name] = {clock: med(lambda r, n=name, c=clock: r[n][c]) for clock in ("wall_s", "cpu_s")}
    for name in ("global", "budgets"):
        results[name]["passes_inside_s"] = med(lambda r, n=name: r[n]["passes_inside_s"])
        results[name]["other_s"] = med(lambda r, n=name: r[n]["wall_s"] - r[n]["passes_inside_s"])
        for clock in ("wall", "cpu"):
            results[name][f"ratio_{clock}"] = med(lambda r, n=name, c=clock: r[f"ratio_{n}_{c}"])
    worst = max(results["global"]["ratio_wall"], results["budgets"]["ratio_wall"])
    target = common.target_entry(
        f"SynFlow ({args.rounds} rounds, global and inside learned budgets) <= {args.target_ratio:g}x its "
        f"{args.rounds} forward/backward passes alone (wall time, median over {args.repeats} interleaved repeats; "
        "the worse of the two)",
        worst,
        args.target_ratio,
        "x passes",
        higher_is_better=False,
    )
    rows = [["passes alone", results["passes"]["wall_s"], results["passes"]["cpu_s"], "", "", "", ""]]
    for name, label in (("global", "SynFlow, global threshold"), ("budgets", "SynFlow inside learned budgets")):
        r = results[name]
        rows.append([label, r["wall_s"], r["cpu_s"], r["passes_inside_s"], r["other_s"], r["ratio_wall"], r["ratio_cpu"]])
    table = common.markdown_table(
        ["what", "wall s", "CPU s", "of which its passes (wall s)", "everything else (wall s)",
         "ratio to passes (wall)", "ratio to passes (CPU)"],
        rows,
    )  # fmt: skip
    table += (
        f"\n\n- `{args.model}` ({numel:,} prunable weights in {len(params)} tensors), {args.rounds} rounds, sparsity "
        f"{args.sparsity}, torch threads {torch.get_num_threads()}; medians of {args.repeats} interleaved repeats "
        "(each ratio within its repeat)."
    )
    payload = common.report("synflow_overhead", vars(args), results, target, table, args.output)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *(argv or sys.argv[1:])])
    environment = payload["environment"]
    Path(args.output).with_suffix(".md").write_text(
        "\n\n".join(
            ["## synflow_overhead", f"```\n{command}\n```", table, common.target_line(target),
             f"Taken {environment['time']}, load average {environment['load_average']}, {environment['cpu_count']} CPUs, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}."]
        ) + "\n"
    )  # fmt: skip
    return payload


if __name__ == "__main__":
    main()
