"""Mask-enforcement overhead: Trainer steps per second with ``PaICallback`` against the same model dense.

Dense and pruned training blocks alternate in one process (dense, pruned, pruned, dense, ... so that a slow drift of
the machine's load cancels out), each block a fresh ``Trainer`` on the same model initialization, the same data
order and the same seeds, with the shared ``TrainRecipe`` (SGD with momentum and weight decay, cosine schedule). The
pruned blocks add ``PaICallback`` (default: magnitude, 90% sparsity), which masks gradients before and weights after
every optimizer step. The steady-state rate is timed between the end of step ``--warmup_steps`` and the last step by
a timing callback, so the one-time pruning at ``on_train_begin`` and the first steps are excluded; the Trainer's own
``train_runtime`` is reported too. The slowdown is the median over dense/pruned pairs.

Target: enforcement slows training down by <= 2%.

    python benchmarks/enforcement_overhead.py [--model mlp] [--blocks 4] [--max_steps 150]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Sequence

import _common as common
import torch
from torch import nn
from transformers import PrinterCallback, Trainer, TrainerCallback
from transformers.modeling_outputs import SequenceClassifierOutput

TARGET_SLOWDOWN_PCT = 2.0


class WideMLP(nn.Module):
    """A wider LeNet-style MLP, so that steps are dominated by arithmetic rather than by Python overhead."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.example_input_shape = tuple(input_shape)
        sizes = [math.prod(input_shape), *hidden, num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        hidden = torch.flatten(pixel_values, start_dim=1)
        for layer in self.layers[:-1]:
            hidden = torch.relu(layer(hidden))
        logits = self.layers[-1](hidden)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class StepTimer(TrainerCallback):
    """Wall-clock time between the end of step ``warmup`` and the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None
        self.last_step = 0

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        now = time.perf_counter()
        if state.global_step == self.warmup:
            self.start = now
        self.end, self.last_step = now, state.global_step

    @property
    def steps_per_second(self) -> float:
        assert self.start is not None and self.end is not None
        return (self.last_step - self.warmup) / (self.end - self.start)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="mlp",
        help="mlp (a wide MLP, see --hidden), a built-in model (lenet300100, convnet) or a timm model name.",
    )
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024], help="Hidden widths of --model mlp.")
    parser.add_argument("--task", default="mnist", help="Built-in task.")
    parser.add_argument("--criterion", default="magnitude", help="PaICallback criterion.")
    parser.add_argument("--sparsity", type=float, default=0.9, help="PaICallback sparsity.")
    parser.add_argument("--blocks", type=int, default=4, help="Dense/pruned pairs (2 x blocks Trainer runs).")
    parser.add_argument("--max_steps", type=int, default=150, help="Optimizer steps per block.")
    parser.add_argument("--warmup_steps", type=int, default=10, help="Steps per block excluded from the timing.")
    parser.add_argument("--batch_size", type=int, default=64, help="Training batch size.")
    parser.add_argument("--target_slowdown_pct", type=float, default=TARGET_SLOWDOWN_PCT, help="Target slowdown.")
    parser.add_argument("--seed", type=int, default=0)
    common.add_threads_argument(parser)
    parser.add_argument("--output", default=common.default_output("enforcement_overhead"), help="JSON result file.")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup_steps < args.max_steps:
        parser.error("--warmup_steps must lie in [0, --max_steps)")
    if args.blocks < 1:
        parser.error("--blocks must be >= 1")
    return args


def build(args: argparse.Namespace, info) -> nn.Module:  # noqa: ANN001
    from autosparse_hf.tasks import build_model

    if args.model == "mlp":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            return WideMLP(info.input_shape, info.num_classes, args.hidden)
    return build_model(args.model, info, seed=args.seed)


def run_block(args: argparse.Namespace, dataset, info, pruned: bool, output_dir: str) -> dict:  # noqa: ANN001
    from autosparse_hf import PaICallback, TrainRecipe, get_prunable_parameters

    model = build(args, info)
    timer = StepTimer(args.warmup_steps)
    callbacks: list[TrainerCallback] = [timer]
    pai = None
    if pruned:
        pai = PaICallback(criterion=args.criterion, sparsity=args.sparsity)
        callbacks.insert(0, pai)
    recipe = TrainRecipe(batch_size=args.batch_size)
    training_args = recipe.training_arguments(
        output_dir, args.seed, max_steps=args.max_steps, logging_strategy="no", save_strategy="no"
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset["train"], callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    output = trainer.train()
    prunable = get_prunable_parameters(model)
    zeros = sum(int((p.param == 0).sum()) for p in prunable.values())
    total = sum(p.param.numel() for p in prunable.values())
    return {
        "pruned": pruned,
        "steady_steps_per_s": timer.steps_per_second,
        "train_runtime_s": float(output.metrics["train_runtime"]),
        "train_steps_per_s": args.max_steps / float(output.metrics["train_runtime"]),
        "zero_fraction": zeros / total,
        "mask_sparsity": pai.masks.sparsity if pai is not None else 0.0,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    from autosparse_hf import get_prunable_parameters
    from autosparse_hf.tasks import load_task, task_info

    info = task_info(args.task)
    dataset = load_task(args.task, seed=0)
    prunable_weights = sum(p.param.numel() for p in get_prunable_parameters(build(args, info)).values())
    blocks = []
    with tempfile.TemporaryDirectory(prefix="bench_enforcement_") as tmp:
        for pair in range(args.blocks):
            # ABBA order: dense first in even pairs, pruned first in odd ones.
            order = (False, True) if pair % 2 == 0 else (True, False)
            result = {}
            for pruned in order:
                result[pruned] = run_block(args, dataset, info, pruned, tmp)
            blocks.append({"pair": pair, "dense": result[False], "pruned": result[True]})

    def slowdown(dense_rate: float, pruned_rate: float) -> float:
        return (dense_rate / pruned_rate - 1.0) * 100.0

    pair_slowdowns = [slowdown(b["dense"]["steady_steps_per_s"], b["pruned"]["steady_steps_per_s"]) for b in blocks]
    pair_slowdowns_runtime = [
        slowdown(b["dense"]["train_steps_per_s"], b["pruned"]["train_steps_per_s"]) for b in blocks
    ]
    dense_rate = common.median([b["dense"]["steady_steps_per_s"] for b in blocks])
    pruned_rate = common.median([b["pruned"]["steady_steps_per_s"] for b in blocks])
    dense_runtime_rate = common.median([b["dense"]["train_steps_per_s"] for b in blocks])
    pruned_runtime_rate = common.median([b["pruned"]["train_steps_per_s"] for b in blocks])
    slowdown_pct = common.median(pair_slowdowns)
    results = {
        "model": args.model,
        "prunable_weights": prunable_weights,
        "dense_steps_per_s": dense_rate,
        "pruned_steps_per_s": pruned_rate,
        "slowdown_pct": slowdown_pct,
        "slowdown_pct_of_medians": slowdown(dense_rate, pruned_rate),
        "pair_slowdowns_pct": pair_slowdowns,
        "dense_train_runtime_steps_per_s": dense_runtime_rate,
        "pruned_train_runtime_steps_per_s": pruned_runtime_rate,
        "slowdown_pct_train_runtime": common.median(pair_slowdowns_runtime),
        "ratio_pruned_over_dense": pruned_rate / dense_rate,
        "achieved_zero_fraction": common.median([b["pruned"]["zero_fraction"] for b in blocks]),
        "blocks": blocks,
    }
    target = common.target_entry(
        f"PaICallback ({args.criterion}, sparsity {args.sparsity}) slows training by <= {args.target_slowdown_pct}%",
        slowdown_pct,
        args.target_slowdown_pct,
        "% slowdown",
        higher_is_better=False,
    )
    rows = [
        ["dense", dense_rate, dense_runtime_rate, "", ""],
        [f"PaICallback {args.criterion} {args.sparsity:.0%}", pruned_rate, pruned_runtime_rate, slowdown_pct,
         results["slowdown_pct_train_runtime"]],
        ["target", "", "", args.target_slowdown_pct, args.target_slowdown_pct],
    ]
    table = common.markdown_table(
        ["training", "steps/s (steady, median)", "steps/s (train_runtime, median)", "slowdown % (steady)",
         "slowdown % (train_runtime)"],
        rows,
    )
    table += (
        f"\n\n{args.model}: {prunable_weights:,} prunable weights, {args.blocks} dense/pruned pairs of "
        f"{args.max_steps} steps (batch {args.batch_size}); per-pair slowdowns %: "
        + ", ".join(f"{s:.2f}" for s in pair_slowdowns)
    )
    return common.report("enforcement_overhead", vars(args), results, target, table, args.output)


if __name__ == "__main__":
    main()
