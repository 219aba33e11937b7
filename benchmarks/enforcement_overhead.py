"""Mask-enforcement overhead: Trainer steps per second with ``PaICallback`` against the same model dense.

Dense and pruned training blocks alternate in one process (dense, pruned, pruned, dense, ... so that a slow drift of
the machine's load cancels out), each block a fresh ``Trainer`` on the same model initialization, the same data
order and the same seeds, with the shared ``TrainRecipe`` (SGD with momentum and weight decay, cosine schedule). The
pruned blocks add ``PaICallback`` (default: magnitude, 90% sparsity), which masks gradients before and weights after
every optimizer step. The steady-state rate is timed between the end of step ``--warmup_steps`` and the last step by
a timing callback, so the one-time pruning at ``on_train_begin`` and the first steps are excluded; the Trainer's own
``train_runtime`` is reported too. The slowdown is the median over dense/pruned pairs. The enforcer's own work
(its gradient hooks, ``mask_gradients`` and ``zero_weights``) is also timed in-process in the pruned blocks, a
direct measure that the load of a shared machine scatters far less than the A/B rates. ``--pass_optimizer`` hands
the optimizer to ``zero_weights`` (which then skips the weight multiply for SGD, Adam and AdamW). Last, one bare
in-place pass over tensors shaped like the prunable gradients is timed (a multiply by the masks, a write of zeros) and
put against a dense step: the floor of any enforcement that writes every gradient.

The blocks are seconds apart, and on a shared machine the load drifts more than the few per cent being measured
between them (three quiet runs of the same command gave block medians of 3.8%, 19.6% and 8.8%). So one more pruned
run (``--interleaved_steps``) switches the enforcement on and off from one step to the next (ABBA) and compares
adjacent steps, milliseconds apart: a step without enforcement does a dense step's arithmetic (dense kernels do not
skip zeros). The target is checked on the median of those pairs, with its quartiles; the blocks stay reported. What
an enforced step leaves behind (masks in the caches instead of the next step's data) is charged to the plain step
after it, which in half the pairs is its partner: if anything, the pairs understate the enforcement.

Target: enforcement slows training down by <= 2%.

    python benchmarks/enforcement_overhead.py [--model mlp] [--blocks 4] [--max_steps 150] [--interleaved_steps 600]
        [--pass_optimizer]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

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


class AlternatingSteps(TrainerCallback):
    """Switches the enforcement on and off from one step to the next in ABBA order (steps 1, 2, 3, 4, ...: on, off,
    off, on, on, off, ...; so each pair of steps 2k - 1, 2k holds one of each) and times every step from the end of the
    step before to its own end (the loading of its batch included, as in a step rate)."""

    def __init__(self, gate: dict[str, bool]) -> None:
        self.gate = gate
        self.gate["on"] = True  # step 1
        self.steps: dict[int, tuple[bool, float]] = {}  # global step -> (enforced, seconds)
        self._last: float | None = None

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        now = time.perf_counter()
        if self._last is not None:
            self.steps[state.global_step] = (self.gate["on"], now - self._last)
        self._last = now
        self.gate["on"] = state.global_step % 4 in (0, 3)  # for the next step

    def pair_slowdowns(self, warmup: int) -> list[float]:
        """Per pair of steps (2k - 1, 2k) after ``warmup``: the enforced step's time over the other's, minus 1, in %."""
        result = []
        for first in range(warmup + 1 + warmup % 2, max(self.steps, default=0), 2):
            pair = [self.steps.get(first), self.steps.get(first + 1)]
            if None in pair:
                continue
            times = {enforced: seconds for enforced, seconds in pair}  # type: ignore[misc]
            result.append((times[True] / times[False] - 1.0) * 100.0)
        return result


def gated(owner: Any, attribute: str, gate: dict[str, bool]) -> Callable[[], None]:
    """Replace ``owner.attribute`` by a wrapper that calls it only while ``gate["on"]``; returns the undo."""
    original = getattr(owner, attribute)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs) if gate["on"] else None

    setattr(owner, attribute, wrapper)
    return lambda: setattr(owner, attribute, original)


def optimizer_aware_pai(criterion: str, sparsity: float) -> TrainerCallback:
    """``PaICallback`` that hands the optimizer to ``MaskEnforcer.zero_weights`` (``--pass_optimizer``).

    With an elementwise optimizer (the recipe's SGD) the enforcer then skips re-zeroing the weights after the first
    step, which provably changes nothing once gradients and optimizer state are zero at pruned positions.
    """
    from autosparse_hf import PaICallback

    class OptimizerAwarePaICallback(PaICallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001, ANN201
            if self.enforcer is not None:
                self.enforcer.zero_weights(optimizer)

    return OptimizerAwarePaICallback(criterion=criterion, sparsity=sparsity)


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
    parser.add_argument(
        "--pass_optimizer",
        action="store_true",
        help="Pruned blocks pass the optimizer to MaskEnforcer.zero_weights, which skips the weight multiply for "
        "elementwise optimizers (SGD, Adam, AdamW).",
    )
    parser.add_argument(
        "--interleaved_steps",
        type=int,
        default=600,
        help="Steps of the run whose enforcement is switched on and off from step to step (0: skip it); its pair "
        "median is what the target is checked on.",
    )
    parser.add_argument("--target_slowdown_pct", type=float, default=TARGET_SLOWDOWN_PCT, help="Target slowdown.")
    parser.add_argument("--seed", type=int, default=0)
    common.add_threads_argument(parser)
    parser.add_argument("--output", default=common.default_output("enforcement_overhead"), help="JSON result file.")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup_steps < args.max_steps:
        parser.error("--warmup_steps must lie in [0, --max_steps)")
    if args.blocks < 1:
        parser.error("--blocks must be >= 1")
    if args.interleaved_steps and args.interleaved_steps < args.warmup_steps + 3:
        parser.error("--interleaved_steps must be 0 or at least --warmup_steps + 3 (one pair of steps after warmup)")
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
        if args.pass_optimizer:
            pai = optimizer_aware_pai(args.criterion, args.sparsity)
        else:
            pai = PaICallback(criterion=args.criterion, sparsity=args.sparsity)
        callbacks.insert(0, pai)
    recipe = TrainRecipe(batch_size=args.batch_size)
    training_args = recipe.training_arguments(
        output_dir, args.seed, max_steps=args.max_steps, logging_strategy="no", save_strategy="no"
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset["train"], callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    work: dict[str, float] = {}
    undo = enforcement_timers(work) if pruned else []
    try:
        output = trainer.train()
    finally:
        for fn in undo:
            fn()
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
        # The enforcer's own work (gradient hooks, mask_gradients, zero_weights), seconds per optimizer step.
        "enforcement_s_per_step": sum(work.get(k, 0.0) for k in ENFORCEMENT_PARTS) / args.max_steps,
        "enforcement_split_s_per_step": {k: work.get(k, 0.0) / args.max_steps for k in ENFORCEMENT_PARTS},
    }


ENFORCEMENT_PARTS = ("gradient_hooks", "mask_gradients", "zero_weights")


def run_interleaved(args: argparse.Namespace, dataset, info, output_dir: str) -> dict:  # noqa: ANN001
    """One Trainer run of ``--interleaved_steps`` steps with ``PaICallback`` whose enforcement (gradient hooks,
    ``mask_gradients``, ``zero_weights``) is switched on and off from step to step (``AlternatingSteps``).

    A step without enforcement does a dense step's arithmetic (the same dense kernels; zeros are not skipped), so
    adjacent steps form A/B pairs a few milliseconds apart, which the slow drifts of a shared machine's load cannot
    tell apart (the blocks of whole runs are seconds apart). The pruned weights do not stay zero in this run (the
    steps without enforcement update them): it measures time only.
    """
    import autosparse_hf.masks.enforce as enforce
    from autosparse_hf import PaICallback, TrainRecipe

    gate: dict[str, bool] = {}
    steps = AlternatingSteps(gate)
    work: dict[str, float] = {}
    undo = enforcement_timers(work)  # timed inside, switched outside: only the enforced steps' work is counted
    undo += [
        gated(enforce, "_mask_grad_in_place", gate),
        gated(enforce.MaskEnforcer, "mask_gradients", gate),
        gated(enforce.MaskEnforcer, "zero_weights", gate),
    ]
    pai = optimizer_aware_pai(args.criterion, args.sparsity) if args.pass_optimizer else PaICallback(
        criterion=args.criterion, sparsity=args.sparsity
    )
    recipe = TrainRecipe(batch_size=args.batch_size)
    training_args = recipe.training_arguments(
        output_dir, args.seed, max_steps=args.interleaved_steps, logging_strategy="no", save_strategy="no"
    )
    trainer = Trainer(model=build(args, info), args=training_args, train_dataset=dataset["train"], callbacks=[pai, steps])
    trainer.remove_callback(PrinterCallback)
    try:
        trainer.train()
    finally:
        for fn in reversed(undo):
            fn()
    slowdowns = steps.pair_slowdowns(args.warmup_steps)
    enforced = [t for on, t in steps.steps.values() if on]
    plain = [t for on, t in steps.steps.values() if not on]
    enforced_steps = 1 + len(enforced)  # step 1 (enforced) is not timed: no step ends before it
    spread = common.quartiles(slowdowns) if slowdowns else [math.nan] * 3
    return {
        "steps": args.interleaved_steps,
        "pairs": len(slowdowns),
        "slowdown_pct": spread[1],
        "slowdown_pct_q1": spread[0],
        "slowdown_pct_q3": spread[2],
        "pair_slowdowns_pct": slowdowns,
        "enforced_step_ms": common.median(enforced) * 1e3 if enforced else math.nan,
        "plain_step_ms": common.median(plain) * 1e3 if plain else math.nan,
        "enforced_steps": enforced_steps,
        "gradient_hook_calls": int(work.get("gradient_hooks_calls", 0)),
        "hooked_parameters": len(pai.enforcer.pairs) if pai.enforcer is not None else 0,
        "enforcement_ms_per_enforced_step": sum(work.get(k, 0.0) for k in ENFORCEMENT_PARTS) / enforced_steps * 1e3,
    }


def enforcement_timers(store: dict[str, float]) -> list:
    """Time the enforcer's work in this process by wrapping it (installed before ``MaskEnforcer`` binds its hooks).

    A direct measure of what enforcement adds to a step, far less noisy on a shared machine than the difference of
    two step rates; it leaves out indirect effects (caches), which the A/B rates include.
    """
    import autosparse_hf.masks.enforce as enforce

    return [
        common.wrap_timed(enforce, "_mask_grad_in_place", store, "gradient_hooks"),
        common.wrap_timed(enforce.MaskEnforcer, "mask_gradients", store, "mask_gradients"),
        common.wrap_timed(enforce.MaskEnforcer, "zero_weights", store, "zero_weights"),
    ]


def pass_floor(model: nn.Module, sparsity: float, repeats: int = 200) -> dict[str, float]:
    """Median seconds of one in-place pass over tensors shaped like the prunable weights' gradients, timed here as
    the enforcer runs (same threads): the multiply by same-dtype masks the gradient hooks do, and a bare write of
    zeros, the cheapest pass that touches every gradient (so the least any enforcement costs that keeps the pruned
    gradients at zero by writing them)."""
    from autosparse_hf import get_prunable_parameters

    generator = torch.Generator().manual_seed(0)
    params = [p.param for p in get_prunable_parameters(model).values()]
    grads = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    masks = [(torch.rand(p.shape, generator=generator) >= sparsity).to(p.dtype) for p in params]

    def timed(fn) -> float:  # noqa: ANN001
        for _ in range(10):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return common.median(times)

    return {
        "multiply_s": timed(lambda: torch._foreach_mul_(grads, masks)),
        "write_zeros_s": timed(lambda: torch._foreach_zero_(grads)),
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
        interleaved = run_interleaved(args, dataset, info, tmp) if args.interleaved_steps else None

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
    enforcement_s = common.median([b["pruned"]["enforcement_s_per_step"] for b in blocks])
    enforcement_pct = enforcement_s * dense_rate * 100.0  # of a dense step (1 / dense_rate seconds)
    floor = pass_floor(build(args, info), args.sparsity)
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
        "enforcement_ms_per_step": enforcement_s * 1e3,
        "enforcement_pct_of_dense_step": enforcement_pct,
        "enforcement_split_ms_per_step": {
            k: common.median([b["pruned"]["enforcement_split_s_per_step"][k] for b in blocks]) * 1e3
            for k in ENFORCEMENT_PARTS
        },
        # One bare in-place pass over gradient-sized tensors, per step and as % of a dense step (pass_floor).
        "pass_floor_ms": {k.removesuffix("_s"): v * 1e3 for k, v in floor.items()},
        "pass_floor_pct_of_dense_step": {k.removesuffix("_s"): v * dense_rate * 100.0 for k, v in floor.items()},
        "blocks": blocks,
        "interleaved": interleaved,
    }
    how = "median of adjacent enforced/plain step pairs" if interleaved else "median of dense/pruned block pairs"
    target = common.target_entry(
        f"PaICallback ({args.criterion}, sparsity {args.sparsity}) slows training by <= {args.target_slowdown_pct}% "
        f"({how})",
        interleaved["slowdown_pct"] if interleaved else slowdown_pct,
        args.target_slowdown_pct,
        "% slowdown",
        higher_is_better=False,
    )
    rows = [
        ["dense", dense_rate, dense_runtime_rate, "", ""],
        [f"PaICallback {args.criterion} {args.sparsity:.0%}" + (", optimizer passed" if args.pass_optimizer else ""),
         pruned_rate, pruned_runtime_rate, slowdown_pct,
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
        + f"\n\nThe enforcer's own work (timed in-process, median over pruned blocks): {enforcement_s * 1e3:.3f} ms per "
        f"step = {enforcement_pct:.2f}% of a dense step ("
        + ", ".join(f"{k} {v:.3f} ms" for k, v in results["enforcement_split_ms_per_step"].items())
        + ")"
        + "\n\nOne bare in-place pass over tensors shaped like the prunable gradients, in this process (median of 200): "
        + ", ".join(
            f"{k.replace('_', ' ')} {results['pass_floor_ms'][k]:.3f} ms = "
            f"{results['pass_floor_pct_of_dense_step'][k]:.2f}% of a dense step"
            for k in results["pass_floor_ms"]
        )
        + " (the multiply is what the gradient hooks do; writing zeros is the least any pass that touches every "
        "gradient costs)"
    )
    if interleaved:
        table += (
            f"\n\nSteps interleaved ({interleaved['steps']} steps of one pruned run, enforcement switched on and off "
            f"from step to step, ABBA; {interleaved['pairs']} pairs of adjacent steps after {args.warmup_steps} warmup): "
            f"slowdown median {interleaved['slowdown_pct']:.2f}% (quartiles {interleaved['slowdown_pct_q1']:.2f}% and "
            f"{interleaved['slowdown_pct_q3']:.2f}%); step {interleaved['enforced_step_ms']:.3f} ms enforced, "
            f"{interleaved['plain_step_ms']:.3f} ms plain (medians); the enforcer's own work "
            f"{interleaved['enforcement_ms_per_enforced_step']:.3f} ms per enforced step"
        )
    return common.report("enforcement_overhead", vars(args), results, target, table, args.output)


if __name__ == "__main__":
    main()
