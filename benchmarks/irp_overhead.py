"""IRP overhead: wall time of the default IRP recipe against cycles x one dense training cycle of the same model.

Runs ``run_irp`` with the defaults of ``IRPRunArguments``, ``IRPConfig`` and ``TrainRecipe`` (LeNet-300-100 on the
built-in MNIST task, 20 pruning cycles plus the final ticket, 10 epochs per cycle) into a temporary folder, and in
the same process times one plain dense ``Trainer`` run of one cycle of the same model on the same data (before and
after the IRP run, to bracket drift of the machine's load). Reported:

* the callback's own work, ``IRPCallback._overhead_seconds`` (initial features and snapshot, per-cycle scoring,
  selection, recording and rewinding; evaluation excluded), as % of the IRP run's total wall time: the target;
* the IRP training time against ``training_cycles x dense cycle`` (the ratio measured in the same run), with the
  per-cycle evaluation, the checkpoints (``checkpoint_every_cycle``) and the final write of the run folder timed
  separately (by wrapping those methods in this process only), so the remainder is what is left unexplained.

Target: the callback's own work is <= 5% of the total.

    python benchmarks/irp_overhead.py [--cycles 20] [--epochs 10] [--max_train_samples N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import _common as common
from transformers import TrainerCallback

TARGET_OVERHEAD_PCT = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from autosparse_hf import IRPConfig, TrainRecipe
    from autosparse_hf.irp.runner import IRPRunArguments

    run, config, recipe = IRPRunArguments(), IRPConfig(), TrainRecipe()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=run.model, help="Model (as IRPRunArguments.model).")
    parser.add_argument("--task", default=run.task, help="Task (as IRPRunArguments.task).")
    parser.add_argument("--cycles", type=int, default=config.cycles, help="IRP pruning cycles.")
    parser.add_argument("--epochs", type=int, default=int(recipe.epochs), help="Epochs per cycle.")
    parser.add_argument("--max_train_samples", type=int, default=None, help="Use only this many training rows.")
    parser.add_argument("--dense_repeats", type=int, default=2, help="Dense one-cycle runs (half before, half after).")
    parser.add_argument("--target_overhead_pct", type=float, default=TARGET_OVERHEAD_PCT, help="Target overhead.")
    parser.add_argument("--seed", type=int, default=run.seed)
    common.add_threads_argument(parser)
    parser.add_argument("--output", default=common.default_output("irp_overhead"), help="JSON result file.")
    args = parser.parse_args(argv)
    if args.dense_repeats < 1:
        parser.error("--dense_repeats must be >= 1")
    return args


class LoopTimer(TrainerCallback):
    """Seconds from ``on_train_begin`` to ``on_train_end``: the window ``IRPCallback`` reports as ``wall_seconds``."""

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.seconds = time.perf_counter() - self.start


def dense_cycle(
    args: argparse.Namespace, recipe, output_dir: str, max_steps: int | None = None  # noqa: ANN001
) -> tuple[float, float]:
    """One dense cycle of the same model, data, recipe and Trainer as ``run_irp``: (training loop, train()) seconds.

    The loop time (``on_train_begin`` to ``on_train_end``) leaves out the Trainer's per-call setup, which the IRP
    run pays once and not once per cycle.
    """
    from transformers import Trainer

    from autosparse_hf.tasks import build_model, compute_metrics_for_classification, load_task, task_info

    dataset = load_task(args.task, seed=0)
    if args.max_train_samples:
        dataset["train"] = dataset["train"].select(range(min(args.max_train_samples, len(dataset["train"]))))
    model = build_model(args.model, task_info(args.task), seed=args.seed)  # exactly what run_irp builds
    overrides = dict(num_train_epochs=int(recipe.epochs), logging_strategy="no", disable_tqdm=True)
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    loop = LoopTimer()
    trainer = Trainer(
        model=model,
        args=recipe.training_arguments(output_dir, args.seed, **overrides),
        train_dataset=dataset["train"],
        eval_dataset=dataset["test"],
        compute_metrics=compute_metrics_for_classification,
        callbacks=[loop],
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's log lines
        trainer.train()
    return loop.seconds, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    import datasets
    from transformers import Trainer

    from autosparse_hf import IRPCallback, IRPConfig, TrainRecipe
    from autosparse_hf.irp.runner import IRPRunArguments, run_irp
    from autosparse_hf.records import read_run_info

    datasets.disable_progress_bars()  # the score dataset's save progress bars; output only
    recipe = TrainRecipe(epochs=args.epochs)
    config = IRPConfig(cycles=args.cycles)
    before = (args.dense_repeats + 1) // 2
    dense_runs: list[tuple[float, float]] = []
    timers: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_irp_") as tmp:
        dense_cycle(args, recipe, f"{tmp}/warmup", max_steps=3)  # one-time costs (lazy imports, data cache)
        for i in range(before):
            dense_runs.append(dense_cycle(args, recipe, f"{tmp}/dense{i}"))
        undo = [
            common.wrap_timed(Trainer, "train", timers, "train"),
            common.wrap_timed(Trainer, "evaluation_loop", timers, "evaluation"),
            common.wrap_timed(Trainer, "_save_checkpoint", timers, "trainer_checkpoint"),
            common.wrap_timed(IRPCallback, "on_save", timers, "irp_checkpoint_state"),
            common.wrap_timed(IRPCallback, "save_run", timers, "save_run_folder"),
        ]
        run = IRPRunArguments(
            model=args.model,
            task=args.task,
            seed=args.seed,
            output_dir=f"{tmp}/irp",
            max_train_samples=args.max_train_samples,
            disable_tqdm=True,
        )
        try:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's log lines
                irp = run_irp(run, config, recipe)
            irp_total = time.perf_counter() - start
        finally:
            for fn in undo:
                fn()
        for i in range(before, args.dense_repeats):
            dense_runs.append(dense_cycle(args, recipe, f"{tmp}/dense{i}"))
        run_info = read_run_info(Path(tmp) / "irp")

    n_cycles = config.training_cycles
    dense_loop = common.median([loop for loop, _ in dense_runs])
    dense_train = common.median([train for _, train in dense_runs])
    expected = n_cycles * dense_loop
    overhead = float(irp._overhead_seconds)
    irp_train = timers["train"]
    irp_loop = float(run_info["wall_seconds"])  # IRPCallback: on_train_begin to on_train_end, before the write
    evaluation = timers.get("evaluation", 0.0)
    checkpoints = timers.get("trainer_checkpoint", 0.0) + timers.get("irp_checkpoint_state", 0.0)
    save_run = timers.get("save_run_folder", 0.0)
    unexplained = irp_loop - expected - evaluation - checkpoints - overhead
    overhead_pct = overhead / irp_total * 100.0
    setup = irp_total - irp_loop - save_run
    results = {
        "model": args.model,
        "task": args.task,
        "training_cycles": n_cycles,
        "irp_total_s": irp_total,
        "irp_train_s": irp_train,
        "irp_loop_s": irp_loop,
        "dense_cycle_loop_s": dense_loop,
        "dense_cycle_train_s": dense_train,
        "dense_cycle_runs_s": [list(r) for r in dense_runs],
        "expected_dense_s": expected,
        "ratio_irp_loop_over_dense": irp_loop / expected,
        "ratio_irp_loop_without_evaluation_over_dense": (irp_loop - evaluation) / expected,
        "callback_overhead_s": overhead,
        "callback_overhead_pct_of_total": overhead_pct,
        "evaluation_s": evaluation,
        "checkpoint_s": checkpoints,
        "save_run_folder_s": save_run,
        "setup_s": setup,
        "unexplained_s": unexplained,
        "final_density": run_info["densities"][-1],
        "timers": timers,
    }
    target = common.target_entry(
        f"IRPCallback's own work <= {args.target_overhead_pct}% of the IRP run's wall time",
        overhead_pct,
        args.target_overhead_pct,
        "% of total",
        higher_is_better=False,
    )

    def pct(x: float) -> float:
        return x / irp_total * 100.0

    rows = [
        ["IRP run (run_irp), total", irp_total, 100.0, ""],
        ["  setup: data, model, Trainer (outside the loop)", setup, pct(setup), ""],
        ["  training loop (on_train_begin..on_train_end)", irp_loop, pct(irp_loop), irp_loop / expected],
        ["    evaluation of each ticket", evaluation, pct(evaluation), ""],
        ["    checkpoints (Trainer + IRP state)", checkpoints, pct(checkpoints), ""],
        ["    callback's own work (_overhead_seconds)", overhead, overhead_pct, ""],
        ["    rest: enforcement, noise", unexplained, pct(unexplained), ""],
        ["  run folder + score dataset write", save_run, pct(save_run), ""],
        [f"dense: {n_cycles} x one cycle's loop ({dense_loop:.3g} s)", expected, pct(expected), 1.0],
        ["target: callback's own work", "", args.target_overhead_pct, ""],
    ]
    table = common.markdown_table(["what", "seconds", "% of IRP total", "ratio to dense"], rows)
    table += (
        f"\n\n{args.model} on {args.task}: {args.cycles} cycles + final ticket, {args.epochs} epoch(s) per cycle, "
        f"final density {results['final_density']:.4f}; 'rest' = loop - dense - evaluation - checkpoints - own work."
    )
    return common.report("irp_overhead", vars(args), results, target, table, args.output)


if __name__ == "__main__":
    main()
