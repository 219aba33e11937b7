"""Wall time and peak memory of every registered criterion, from LeNet-300-100 up to GPT-2-small scale.

Every (model, criterion) cell runs in its own fresh interpreter, so its peak memory is its own: the child builds the
model and one batch, records the RSS, resets the kernel's RSS high-water mark (VmHWM, through
``/proc/self/clear_refs``) and runs

    compute_scores(model, criterion, dataloader=[batch], sparsity=0.9, num_batches=1)

with the criterion's default options (the paper defaults: SynFlow 100 rounds, Iter SNIP / FORCE 60 steps, ProsPr 3
inner steps, NTK-SAP 20 rounds x 5 samples x batch 100). Reported per cell: wall seconds of that call, the peak RSS
during it (absolute and minus the RSS after the build: the *peak extra*), and the peak extra as a multiple of the
model's parameter bytes (issues 14 and 15). ``autos_synflow`` is the library's default AutoS recipe: SynFlow inside
learned layer budgets, timed as the budget prediction (``LearnedAllocation.allocate``) plus ``compute_scores`` of
SynFlow inside those counts; its predictor is untrained (a budget model with zero coefficients, i.e. uniform
density), which costs the same as a trained one. The criteria ``autos``, ``autos_paper`` and ``ticket`` need a
trained predictor or an IRP run and are left out.

Models (``--models``): ``lenet300100`` (batch of 64 random MNIST-shaped inputs), ``gpt2-small`` (transformers
``GPT2LMHeadModel(GPT2Config())``, 124M parameters, built from the config; 2 sequences of 128 random token ids with
``labels=input_ids``), ``gpt2-tiny`` (2 layers of width 64, for smoke tests), any other name a timm model
(``pretrained=False``, 10 classes, a batch of 32 random ``3 x --image_size x --image_size`` images). A cell that
runs past ``--timeout`` seconds, or whose RSS passes ``--max_rss_gb`` (default 60% of the machine's memory, so that
one cell cannot take a shared machine down), is stopped and reported as such, not dropped.

Target (issue 14): on GPT-2 small every criterion completes with a peak extra of at most 3x the model's parameter
bytes; measured on the largest model of the run when gpt2-small is not in it.

``--criterion_options`` overrides default options per criterion, as JSON, e.g. NTK-SAP reduced to what a shared
CPU finishes (its paper default, 20 rounds x 5 draws x 100 random inputs, is 10,000 forward/backward pairs on GPT-2):
``--criterion_options '{"ntksap": {"rounds": 2, "num_samples": 1, "batch_size": 2, "micro_batch_size": 1}}'``. The
options each cell ran with are recorded (results.criterion_options).

Peak RSS counts what the C allocator keeps, not only live tensors: glibc's malloc raises its mmap threshold after a
large block is freed, so later mid-sized tensors (a few MB, most activations and per-layer gradients) come from a
heap that fragments and does not shrink. The child inherits the environment, so ``MALLOC_TOP_PAD_=0`` (or any
``MALLOC_MMAP_THRESHOLD_``), which fixes the threshold at 128 KiB, measures close to the live tensors' peak; the
``MALLOC_*`` variables of a run are recorded (results.malloc_env). The library itself hands the heap's free pages
back between passes and while some criteria's backward passes run (``autosparse_hf.heap``); ``--no_heap_release``
turns that off in every cell, to measure what it saves and costs.

    python benchmarks/criterion_cost.py [--models lenet300100 resnet18 resnet50 gpt2-small] [--criteria ...]
                                        [--criterion_options JSON] [--timeout 900] [--max_rss_gb G] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common

CRITERIA = (
    "random",
    "magnitude",
    "snip",
    "grasp",
    "synflow",
    "iter_snip",
    "force",
    "prospr",
    "ntksap",
    "autos_synflow",
)
LABELS = {"autos_synflow": "autos (synflow in learned budgets)"}
MODELS = ("lenet300100", "resnet18", "resnet50", "gpt2-small")
TARGET_MULTIPLE = 3.0
SPARSITY = 0.9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS),
        help="lenet300100, gpt2-small, gpt2-tiny, or timm model names (pretrained=False, 10 classes).",
    )  # fmt: skip
    parser.add_argument("--criteria", nargs="+", choices=CRITERIA, default=list(CRITERIA), help="Criteria scored.")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds one cell (one child process) may take.")
    parser.add_argument(
        "--max_rss_gb", type=float, default=None,
        help="Stop a cell whose RSS passes this many GB (default: 60%% of the machine's memory).",
    )  # fmt: skip
    parser.add_argument("--image_size", type=int, default=32, help="Height and width of the timm models' images.")
    parser.add_argument("--timm_batch_size", type=int, default=32, help="Images in the timm models' batch.")
    parser.add_argument("--lenet_batch_size", type=int, default=64, help="Inputs in LeNet-300-100's batch.")
    parser.add_argument("--gpt2_batch_size", type=int, default=2, help="Sequences in the GPT-2 batch.")
    parser.add_argument("--seq_len", type=int, default=128, help="Tokens per GPT-2 sequence.")
    parser.add_argument("--target_multiple", type=float, default=TARGET_MULTIPLE, help="Peak extra / param bytes.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--criterion_options", type=json.loads, default={},
        help='Options per criterion, as JSON: {"ntksap": {"rounds": 2, "micro_batch_size": 1}}.',
    )  # fmt: skip
    parser.add_argument(
        "--no_heap_release", action="store_true",
        help="Disable the library's malloc_trim calls (autosparse_hf.heap) in every cell, to measure what they save.",
    )  # fmt: skip
    common.add_threads_argument(parser)
    parser.add_argument("--output", default=common.default_output("criterion_cost"), help="JSON result file.")
    parser.add_argument("--_child", nargs=2, metavar=("MODEL", "CRITERION"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    if not isinstance(args.criterion_options, dict) or not all(
        isinstance(v, dict) for v in args.criterion_options.values()
    ):
        parser.error("--criterion_options must be a JSON object of criterion name -> options object")
    unknown = sorted(set(args.criterion_options) - set(CRITERIA))
    if unknown:
        parser.error(f"--criterion_options names unknown criteria {unknown}")
    if args.max_rss_gb is None:
        args.max_rss_gb = round(0.6 * total_memory_bytes() / 1024**3, 1)
    return args


def total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        import psutil

        return int(psutil.virtual_memory().total)


# ----------------------------------------------------------------------------------------------------------- child
def build(args: argparse.Namespace, name: str) -> tuple[Any, dict[str, Any], str]:
    """The freshly initialized model, its one batch, and a description of the batch."""
    import torch

    g = torch.Generator().manual_seed(args.seed)
    if name in ("lenet300100", "lenet"):
        from autosparse_hf.tasks import build_model

        model = build_model("lenet300100", "mnist", seed=args.seed)
        n = args.lenet_batch_size
        batch = {
            "pixel_values": torch.randn(n, 1, 28, 28, generator=g),
            "labels": torch.randint(0, 10, (n,), generator=g),
        }
        return model, batch, f"{n} x 1 x 28 x 28 random inputs, 10 classes"
    if name in ("gpt2-small", "gpt2-tiny"):
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config() if name == "gpt2-small" else GPT2Config(n_layer=2, n_embd=64, n_head=2)
        torch.manual_seed(args.seed)
        model = GPT2LMHeadModel(config)
        ids = torch.randint(0, config.vocab_size, (args.gpt2_batch_size, args.seq_len), generator=g)
        return (
            model,
            {"input_ids": ids, "labels": ids.clone()},
            (f"{args.gpt2_batch_size} x {args.seq_len} random token ids, labels=input_ids"),
        )
    import timm

    torch.manual_seed(args.seed)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    n, s = args.timm_batch_size, args.image_size
    batch = {"pixel_values": torch.randn(n, 3, s, s, generator=g), "labels": torch.randint(0, 10, (n,), generator=g)}
    return model, batch, f"{n} x 3 x {s} x {s} random images, 10 classes"


def criterion_options(criterion: Any) -> dict[str, Any]:
    import dataclasses

    if not dataclasses.is_dataclass(criterion):
        return {}
    return {f.name: getattr(criterion, f.name) for f in dataclasses.fields(criterion)}


def child(args: argparse.Namespace) -> None:
    """One cell in this fresh process; prints one JSON line."""
    import resource

    import torch

    from autosparse_hf import compute_scores, get_criterion, get_prunable_parameters, heap

    common.apply_threads(args.threads)
    if args.no_heap_release:
        heap._malloc_trim = lambda: None  # as on a C library without malloc_trim: no release, no hooks
    model_name, name = args._child
    model, batch, batch_description = build(args, model_name)
    params = get_prunable_parameters(model)
    prunable = sum(p.param.numel() for p in params.values())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # shared (tied) tensors once
    allocate = None
    if name == "autos_synflow":
        from autosparse_hf import AutoSConfig, AutoSModel
        from autosparse_hf.allocation.learned import LearnedAllocation
        from autosparse_hf.predictor.budgets import BUDGET_FEATURES

        # An untrained budget model (zero coefficients: every tensor at the global density) costs what a trained
        # one does; the predictor is built before the baseline, as a loaded one would be.
        budget_model = {"features": list(BUDGET_FEATURES), "coef": [0.0] * len(BUDGET_FEATURES)}
        predictor = AutoSModel(AutoSConfig(budget_model=budget_model, within_layer="synflow"))
        allocation = LearnedAllocation(predictor)
        criterion = get_criterion("synflow", **args.criterion_options.get(name, {}))
        options = {**criterion_options(criterion), "budgets": "learned (untrained budget model, zero coefficients)"}

        def allocate() -> dict[str, int]:
            return allocation.allocate(params, SPARSITY, type(model).__name__).counts
    else:
        criterion = get_criterion(name, **args.criterion_options.get(name, {}))
        options = criterion_options(criterion)
    gc.collect()
    with common.PeakRSS() as peak:
        start = time.perf_counter()
        budgets = allocate() if allocate is not None else None
        scores = compute_scores(
            model, criterion, dataloader=[batch], sparsity=SPARSITY, num_batches=1, params=params, budgets=budgets
        )
        seconds = time.perf_counter() - start
    scale = 1 if sys.platform == "darwin" else 1024
    ru_maxrss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
    scored = sum(s.numel() for s in scores.values())
    if scored != prunable:
        raise RuntimeError(f"{name} scored {scored} weights of {prunable}")
    common.child_reply(
        {
            "model": model_name,
            "criterion": name,
            "seconds": seconds,
            "param_bytes": param_bytes,
            "prunable_weights": prunable,
            "prunable_tensors": len(params),
            "rss_after_build_bytes": peak.baseline_bytes,
            "peak_rss_bytes": peak.peak_bytes,
            "peak_extra_bytes": peak.delta_bytes,
            "peak_extra_over_params": peak.delta_bytes / param_bytes,
            "exact_peak": peak.exact,
            "heap_release": heap._malloc_trim() is not None,
            "ru_maxrss_bytes": ru_maxrss,
            "rss_after_scoring_bytes": peak.end_bytes,
            "options": {
                k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v) for k, v in options.items()
            },
            "batch": batch_description,
            "model_class": type(model).__name__,
            "torch_threads": torch.get_num_threads(),
        }
    )


# ---------------------------------------------------------------------------------------------------------- parent
def child_rss_bytes(pid: int) -> int:
    """RSS of process ``pid`` now (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    else:
        return 0
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:  # noqa: BLE001 - gone, or no way to tell: never stops a cell
        return 0


def run_cell(args: argparse.Namespace, model: str, criterion: str) -> dict[str, Any]:
    """One cell in a fresh interpreter, watched: stopped past ``--timeout`` seconds or ``--max_rss_gb`` of RSS."""
    forwarded = [
        "--_child", model, criterion, "--image_size", str(args.image_size), "--timm_batch_size",
        str(args.timm_batch_size), "--lenet_batch_size", str(args.lenet_batch_size), "--gpt2_batch_size",
        str(args.gpt2_batch_size), "--seq_len", str(args.seq_len), "--seed", str(args.seed),
        "--criterion_options", json.dumps(args.criterion_options),
        *(["--threads", str(args.threads)] if args.threads is not None else []),
        *(["--no_heap_release"] if args.no_heap_release else []),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    limit = args.max_rss_gb * 1024**3
    status, watched_peak = "done", 0
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, *forwarded], stdout=out, stderr=err, text=True, env=env)
        while proc.poll() is None:
            watched_peak = max(watched_peak, child_rss_bytes(proc.pid))
            if watched_peak > limit:
                status = "memory"
            elif time.perf_counter() - start > args.timeout:
                status = "timeout"
            if status != "done":
                proc.kill()
                proc.wait()
                break
            time.sleep(0.2)
        process_s = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if status == "timeout":
        return {"status": "timeout", "timeout_s": args.timeout, "process_s": process_s}
    if status == "memory":
        return {
            "status": "memory",
            "max_rss_gb": args.max_rss_gb,
            "process_s": process_s,
            "stderr_tail": stderr[-3000:],
        }
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [line for line in stderr.strip().splitlines() if line.strip()]
        return {
            "status": "error",
            "returncode": proc.returncode,
            "error": tail[-1] if tail else f"exit code {proc.returncode}",
            "stderr_tail": stderr[-3000:],
            "process_s": process_s,
        }
    return {"status": "ok", **json.loads(lines[-1]), "process_s": process_s}


def cell_text(cell: dict[str, Any]) -> list[Any]:
    mb = common.MB
    if cell["status"] == "ok":
        return [cell["seconds"], cell["peak_extra_bytes"] / mb, cell["peak_extra_over_params"]]
    if cell["status"] == "timeout":
        return [f"did not finish in {cell['timeout_s']:g} s", "-", "-"]
    if cell["status"] == "memory":
        return [f"stopped: RSS over {cell['max_rss_gb']:g} GB", "-", "-"]
    return [f"error: {cell['error'][:60]}", "-", "-"]


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args._child:
        child(args)
        return None
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *(argv or sys.argv[1:])])
    output = Path(args.output)
    cells: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in args.models}
    for model in args.models:
        for criterion in args.criteria:
            cell = run_cell(args, model, criterion)
            cells[model][criterion] = cell
            shown = cell_text(cell)
            print(
                f"[{model} / {criterion}] time s: {common.fmt(shown[0])}, peak extra MB: {common.fmt(shown[1])}, "
                f"x params: {common.fmt(shown[2])}",
                flush=True,
            )
            # Partial results after every cell: a long run that is interrupted keeps what it measured.
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps({"partial": True, "command": command, "cells": cells}, indent=2) + "\n")

    models: dict[str, dict[str, Any]] = {}
    for model, by_criterion in cells.items():
        done = [c for c in by_criterion.values() if c["status"] == "ok"]
        first = done[0] if done else {}
        models[model] = {
            key: first.get(key)
            for key in ("model_class", "param_bytes", "prunable_weights", "prunable_tensors", "batch", "torch_threads")
        }
        models[model]["rss_after_build_bytes"] = (
            common.median([c["rss_after_build_bytes"] for c in done]) if done else None
        )
        models[model]["all_finished"] = len(done) == len(by_criterion)
    options = {}
    for by_criterion in cells.values():
        for criterion, cell in by_criterion.items():
            if cell["status"] == "ok":
                options.setdefault(criterion, cell["options"])

    # Target: the worst multiple on GPT-2 small (or the largest model of this run).
    measured_on = "gpt2-small" if "gpt2-small" in models else max(models, key=lambda m: models[m]["param_bytes"] or 0)
    done = [c for c in cells[measured_on].values() if c["status"] == "ok"]
    worst = max((c["peak_extra_over_params"] for c in done), default=0.0)
    worst_criterion = max(done, key=lambda c: c["peak_extra_over_params"])["criterion"] if done else None
    all_finished = models[measured_on]["all_finished"]
    target = common.target_entry(
        f"every criterion completes on {measured_on} with peak extra RSS <= {args.target_multiple:g}x the model's "
        f"parameter bytes (worst cell: {worst_criterion}; all finished: {all_finished})",
        worst,
        args.target_multiple,
        "x param bytes",
        higher_is_better=False,
    )
    target["met"] = bool(target["met"] and all_finished)
    threads = sorted({c["torch_threads"] for m in cells.values() for c in m.values() if c["status"] == "ok"})
    results = {
        "sparsity": SPARSITY,
        "num_batches": 1,
        "torch_threads": threads[0] if len(threads) == 1 else threads,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "heap_release": not args.no_heap_release,
        "command": command,
        "criterion_options": options,
        "models": models,
        "cells": cells,
    }

    mb = common.MB
    headers = ["criterion"]
    for model in args.models:
        headers += [f"{model} s", f"{model} peak extra MB", f"{model} x params"]
    rows = []
    for criterion in args.criteria:
        row: list[Any] = [LABELS.get(criterion, criterion)]
        for model in args.models:
            row += cell_text(cells[model][criterion])
        rows.append(row)
    table = common.markdown_table(headers, rows)
    notes = []
    for model, info in models.items():
        if info["param_bytes"]:
            notes.append(
                f"- `{model}` ({info['model_class']}): {info['prunable_weights']:,} prunable weights in "
                f"{info['prunable_tensors']} tensors, {info['param_bytes'] / mb:.1f} MB of parameters, RSS after build "
                f"{info['rss_after_build_bytes'] / mb:.0f} MB; batch: {info['batch']}."
            )
    notes.append(
        f"- compute_scores(..., sparsity={SPARSITY}, num_batches=1), "
        + (f"default options except {json.dumps(args.criterion_options)} " if args.criterion_options else "default options ")
        + "(JSON: results.criterion_options), "
        f"C allocator settings: {results['malloc_env'] or 'glibc defaults'}, "
        f"the library's heap release (malloc_trim): {'on' if results['heap_release'] else 'off (--no_heap_release)'}, "
        f"one fresh process per cell, torch threads: {results['torch_threads']} (OMP_NUM_THREADS="
        f"{results['omp_num_threads_env']}); time = the call alone (first-use costs of a fresh process included); "
        "peak extra = peak RSS during the call minus the RSS after building the model and batch."
    )
    table += "\n\n" + "\n".join(notes)
    payload = common.report("criterion_cost", vars(args), results, target, table, str(output))
    md = "\n\n".join(
        ["## criterion_cost", f"```\n{command}\n```", table, common.target_line(target), f"Taken {payload['environment']['time']}, "
         f"load average {payload['environment']['load_average']}, {payload['environment']['cpu_count']} CPUs."]
    ) + "\n"  # fmt: skip
    output.with_suffix(".md").write_text(md)
    print(f"written: {output.with_suffix('.md')}")
    return payload


if __name__ == "__main__":
    main()
