"""IRP at scale: wall time and peak memory of the IRP cycle boundary (score, select, rewind) on large models.

Issue 14 asks how one IRP cycle boundary behaves on models users of transformers and timm actually prune: a
GPT-2-small-size decoder (124M parameters, 84.9M prunable) and a timm ResNet-50 (23.5M prunable). Every model runs
in its own fresh interpreter, under a real ``transformers.Trainer`` with ``IRPCallback`` (the library's defaults:
magnitude criterion, global scope, rewind to initialization) and SGD with momentum, on a tiny random dataset of one
batch per epoch, so each IRP cycle is one optimizer step and the run is dominated by what is measured:

* ``start``: ``IRPCallback.on_train_begin`` (prunable parameters, the rewind snapshot of the initial weights and the
  initial features ``g0`` averaged over the first batches);
* ``boundary``: ``IRPCallback._end_cycle`` once per pruning cycle (record the ticket, score the trained weights,
  select the next global mask, record who was pruned when, rewind weights/buffers/optimizer/schedule, enforce), split
  into ``score+select`` (``_prune``) and ``rewind`` (``_rewind``).

Memory is the peak anonymous RSS of each phase (sampled every millisecond by a thread) minus the anonymous RSS when
the phase began, as a multiple of the model's parameter bytes, next to what the run holds all the time: the
initial-weight snapshot (1x), the per-weight pruning record (``cycle_pruned``, two bytes per prunable weight) and the
optimizer state. Target (issue 14): the boundary's peak extra is at most 3x the model's parameter bytes.

    python benchmarks/irp_boundary.py [--models gpt2-small resnet50] [--cycles 2] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common

MODELS = ("gpt2-small", "resnet50")
TARGET_MULTIPLE = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), help="gpt2-small, gpt2-tiny (smoke tests), or timm model names."
    )
    parser.add_argument("--cycles", type=int, default=2, help="IRP pruning cycles (each one optimizer step).")
    parser.add_argument("--final_sparsity", type=float, default=0.9, help="Sparsity after the last cycle.")
    parser.add_argument("--seq_len", type=int, default=128, help="Tokens per GPT-2 sequence.")
    parser.add_argument("--gpt2_batch_size", type=int, default=2, help="Sequences per GPT-2 batch.")
    parser.add_argument("--timm_batch_size", type=int, default=8, help="Images per timm batch (1 x 28 x 28).")
    parser.add_argument(
        "--save_run",
        action="store_true",
        help="Also time the end-of-run write of the run folder (score dataset: one row per prunable weight, about "
        "130 bytes each; 11 GB for GPT-2 small), as the phase `save_run`; without it the folder is not written.",
    )
    parser.add_argument("--target_multiple", type=float, default=TARGET_MULTIPLE, help="Boundary peak / params.")
    parser.add_argument("--seed", type=int, default=0)
    common.add_threads_argument(parser)
    parser.add_argument("--output", default=common.default_output("irp_boundary"), help="JSON result file.")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cycles < 1:
        parser.error(f"--cycles must be >= 1, got {args.cycles}")
    if not 0.0 < args.final_sparsity < 1.0:
        parser.error(f"--final_sparsity must lie in (0, 1), got {args.final_sparsity}")
    return args


def build(args: argparse.Namespace, name: str) -> tuple[Any, Any, str]:
    """The freshly initialized model, a one-batch training dataset, and a description of the batch."""
    import torch
    from datasets import Dataset

    g = torch.Generator().manual_seed(args.seed)
    if name in ("gpt2-small", "gpt2-tiny"):
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config() if name == "gpt2-small" else GPT2Config(n_layer=2, n_embd=64, n_head=2)
        torch.manual_seed(args.seed)
        model = GPT2LMHeadModel(config)
        ids = torch.randint(0, config.vocab_size, (args.gpt2_batch_size, args.seq_len), generator=g)
        data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()}).with_format("torch")
        return model, data, f"{args.gpt2_batch_size} x {args.seq_len} random token ids, labels=input_ids"
    from autosparse_hf.tasks import build_model

    model = build_model(name, 10, input_shape=(1, 28, 28), seed=args.seed)
    n = args.timm_batch_size
    data = Dataset.from_dict(
        {"pixel_values": torch.randn(n, 1, 28, 28, generator=g).tolist(), "labels": torch.randint(0, 10, (n,)).tolist()}
    ).with_format("torch")
    return model, data, f"{n} x 1 x 28 x 28 random images, 10 classes"


class PhaseMeter:
    """Wall time and peak RSS increase of each call of the wrapped methods, per phase name."""

    def __init__(self) -> None:
        self.calls: dict[str, list[dict[str, float]]] = {}
        self.depth = 0

    def wrap(self, owner: Any, attribute: str, phase: str) -> None:
        original = getattr(owner, attribute)

        def measured(*a: Any, **k: Any) -> Any:
            if not self.depth:  # a collection inside a phase would count in the enclosing phase's time
                gc.collect()
            self.depth += 1
            # A sampling thread, not the kernel's high-water mark: phases nest (the boundary holds score+select and
            # rewind), and resetting the mark inside would hide the outer phase's earlier peak.
            with common.AnonPeakSampler(interval=0.001) as peak:
                start = time.perf_counter()
                try:
                    result = original(*a, **k)
                finally:
                    self.depth -= 1
                seconds = time.perf_counter() - start
            self.calls.setdefault(phase, []).append({"seconds": seconds, "peak_extra_bytes": peak.delta_bytes})
            return result

        setattr(owner, attribute, measured)


def child(args: argparse.Namespace) -> None:
    """One model in this fresh process; prints one JSON line."""
    import torch
    from transformers import Trainer, TrainingArguments

    from autosparse_hf import IRPCallback, IRPConfig, get_prunable_parameters

    common.apply_threads(args.threads)
    name = args._child
    model, data, batch = build(args, name)
    params = get_prunable_parameters(model)
    prunable = sum(p.param.numel() for p in params.values())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied tensors once
    irp = IRPCallback(
        IRPConfig(cycles=args.cycles, final_sparsity=args.final_sparsity, evaluate_cycles=False),
        model_name=name,
        task_name="random",
    )
    meter = PhaseMeter()
    # Instance attributes shadow the class's methods for this callback only.
    meter.wrap(irp, "on_train_begin", "start")
    meter.wrap(irp, "_prune", "score+select")
    meter.wrap(irp, "_rewind", "rewind")
    meter.wrap(irp, "_end_cycle", "boundary")
    if args.save_run:
        meter.wrap(irp, "save_run", "save_run")
    else:
        irp.save_run = lambda *a, **k: None  # the boundary is what is measured; the run folder is not written
    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=irp.config.training_cycles,  # one step per epoch, one epoch per cycle
            per_device_train_batch_size=len(data),
            learning_rate=0.01,
            optim="sgd",
            optim_args="momentum=0.9",
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            seed=args.seed,
            logging_strategy="no",
        )
        trainer = Trainer(model=model, args=training, train_dataset=data, callbacks=[irp])
        rss_before_train = common.rss_bytes()
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
    record = irp.record
    assert record is not None and record.finished
    held_record_bytes = sum(t.numel() * t.element_size() for t in irp.cycle_pruned.values())
    distinct = {id(t): t for t in irp.init_snapshot.values()}.values()  # a tied weight's one copy counted once
    snapshot_bytes = sum(t.numel() * t.element_size() for t in distinct)
    density = sum(int(m.sum()) for m in irp.masks.values()) / prunable
    common.child_reply(
        {
            "model": name,
            "model_class": type(model).__name__,
            "param_bytes": param_bytes,
            "prunable_weights": prunable,
            "prunable_tensors": len(params),
            "batch": batch,
            "phases": meter.calls,
            "train_seconds": train_seconds,
            "rss_before_train_bytes": rss_before_train,
            "snapshot_bytes": snapshot_bytes,
            "record_bytes": held_record_bytes,
            "final_density": density,
            "training_cycles": irp.config.training_cycles,
            "torch_threads": torch.get_num_threads(),
        }
    )


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args._child:
        child(args)
        return None
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *(argv or sys.argv[1:])])
    forwarded = [
        "--cycles", str(args.cycles), "--final_sparsity", str(args.final_sparsity), "--seq_len", str(args.seq_len),
        "--gpt2_batch_size", str(args.gpt2_batch_size), "--timm_batch_size", str(args.timm_batch_size),
        "--seed", str(args.seed), *(["--save_run"] if args.save_run else []), *(["--threads", str(args.threads)] if args.threads is not None else []),
    ]  # fmt: skip
    results: dict[str, Any] = {}
    for name in args.models:
        results[name] = common.run_child([__file__, "--_child", name, *forwarded])
        print(json.dumps({name: results[name]["phases"]}), flush=True)

    mb = common.MB
    rows, worst = [], 0.0
    for name, r in results.items():
        size = r["param_bytes"]
        for phase in ("start", "score+select", "rewind", "boundary", "save_run"):
            calls = r["phases"].get(phase, [])
            if not calls:
                continue
            peak = max(c["peak_extra_bytes"] for c in calls)
            if phase == "boundary":
                worst = max(worst, peak / size)
            rows.append(
                [name, phase, len(calls), common.median([c["seconds"] for c in calls]), peak / mb, peak / size]
            )
    table = common.markdown_table(
        ["model", "phase", "calls", "median s", "max peak extra MB", "x params"], rows
    )
    notes = [
        f"- `{name}` ({r['model_class']}): {r['prunable_weights']:,} prunable weights in {r['prunable_tensors']} "
        f"tensors, {r['param_bytes'] / mb:.1f} MB of parameters; batch {r['batch']}; {r['training_cycles']} training "
        f"cycles of one SGD-momentum step, {r['train_seconds']:.1f} s in all; held through the run: the initial-weight "
        f"snapshot {r['snapshot_bytes'] / mb:.1f} MB, the pruning record {r['record_bytes'] / mb:.1f} MB; final "
        f"density {r['final_density']:.4f}."
        for name, r in results.items()
    ]
    notes.append(
        "- `boundary` = `IRPCallback._end_cycle` (record, `score+select` = `_prune`, `rewind` = `_rewind`); `start` = "
        "`on_train_begin` (snapshot + initial features). Peak extra = peak anonymous RSS during the call (sampled "
        "every millisecond) minus that at its start."
    )
    table += "\n\n" + "\n".join(notes)
    target = common.target_entry(
        f"IRP cycle boundary peak extra RSS <= {args.target_multiple:g}x the model's parameter bytes (worst model)",
        worst,
        args.target_multiple,
        "x param bytes",
        higher_is_better=False,
    )
    payload = common.report("irp_boundary", vars(args), {"command": command, "models": results}, target, table,
                            args.output)  # fmt: skip
    env = payload["environment"]
    md = "\n\n".join(
        ["## irp_boundary", f"```\n{command}\n```", table, common.target_line(target),
         f"Taken {env['time']}, load average {env['load_average']}, {env['cpu_count']} CPUs."]
    ) + "\n"  # fmt: skip
    Path(args.output).with_suffix(".md").write_text(md)
    return payload


if __name__ == "__main__":
    main()
