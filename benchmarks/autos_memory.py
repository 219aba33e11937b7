"""Peak memory of AutoS scoring against the size of the model it scores.

Each measurement runs in a fresh interpreter: it builds the timm model (default ``resnet18``, 11.7M prunable
weights), one batch of random images and an untrained default predictor (``AutoSModel(AutoSConfig())``; a trained
one has the same size), then resets the kernel's RSS high-water mark (VmHWM) and runs one of

* ``autos``: ``compute_scores(model, AutoSCriterion(predictor=..., num_batches=1), dataloader=[batch])``, the
  criterion path as configured by default (state snapshot, ``g0`` and unit statistics, per-tensor feature
  statistics, feature rows and prediction chunk by chunk);
* ``autos_sequential``: the same with ``prefetch=False`` set explicitly (one tensor's statistics at a time, no
  second thread);
* ``autos_prefetch``: the same with ``prefetch=True`` (the next tensor's statistics in a background thread);
* ``autos_prune``: ``prune_at_init`` with the same criterion: scoring, top-k selection and applying the masks;
* ``features``: ``compute_initial_features`` alone (``w0``, ``g0``), the part every gradient-based criterion needs;
* ``magnitude``: ``compute_scores(model, "magnitude")``, the cheapest criterion through the same path;

and reports the peak RSS increase (and the sampled peak of private, anonymous memory) against the model's parameter
bytes.

Target: AutoS scoring needs at most a few hundred MB beyond the model: peak RSS increase <= 400 MB for ResNet-18.

    python benchmarks/autos_memory.py [--model resnet18] [--measure autos autos_prune features magnitude]
"""

from __future__ import annotations

import argparse
import gc
import time

import _common as common

MEASUREMENTS = ("autos", "autos_sequential", "autos_prefetch", "autos_prune", "features", "magnitude")
TARGET_MB = 400.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_scoring_model_arguments(parser)
    parser.add_argument(
        "--measure", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS), help="What to measure."
    )
    parser.add_argument("--repeats", type=int, default=1, help="Fresh processes per measurement (median).")
    parser.add_argument("--target_mb", type=float, default=TARGET_MB, help="Target peak increase of 'autos' (MB).")
    parser.add_argument("--seed", type=int, default=0)
    common.add_threads_argument(parser)
    parser.add_argument("--output", default=common.default_output("autos_memory"), help="JSON result file.")
    parser.add_argument("--_child", choices=MEASUREMENTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import timm
    import torch

    from autosparse_hf import (
        AutoSConfig,
        AutoSModel,
        compute_initial_features,
        compute_scores,
        get_prunable_parameters,
        prune_at_init,
    )
    from autosparse_hf.criteria.autos import AutoSCriterion

    common.apply_threads(args.threads)
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
    g = torch.Generator().manual_seed(args.seed)
    batches = [
        {
            "pixel_values": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g),
            "labels": torch.randint(0, args.num_classes, (args.batch_size,), generator=g),
        }
    ]
    criterion = AutoSCriterion(predictor=AutoSModel(AutoSConfig()), num_batches=1)
    params = get_prunable_parameters(model)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    prunable = sum(p.param.numel() for p in params.values())
    gc.collect()
    with common.PeakRSS() as peak, common.AnonPeakSampler() as anon:
        start = time.perf_counter()
        if args._child == "autos":
            result = compute_scores(model, criterion, dataloader=batches, sparsity=0.9)
        elif args._child in ("autos_sequential", "autos_prefetch"):
            criterion.prefetch = args._child == "autos_prefetch"
            result = compute_scores(model, criterion, dataloader=batches, sparsity=0.9)
        elif args._child == "autos_prune":
            result = prune_at_init(model, criterion, 0.9, batches)
        elif args._child == "features":
            result = compute_initial_features(model, batches, 1)
        else:
            result = compute_scores(model, "magnitude")
        seconds = time.perf_counter() - start
    del result
    common.child_reply(
        {
            "measure": args._child,
            "seconds": seconds,
            "param_bytes": param_bytes,
            "prunable_weights": prunable,
            "baseline_rss_bytes": peak.baseline_bytes,
            "peak_delta_bytes": peak.delta_bytes,
            "anon_peak_delta_bytes": anon.delta_bytes,
            "exact_peak": peak.exact,
            "torch_threads": torch.get_num_threads(),
        }
    )


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args._child:
        child(args)
        return None
    if "autos" not in args.measure:
        args.measure = ["autos", *args.measure]  # the target is on it
    forwarded = [
        "--model", args.model, "--num_classes", str(args.num_classes), "--batch_size", str(args.batch_size),
        "--image_size", str(args.image_size), "--seed", str(args.seed),
        *(["--threads", str(args.threads)] if args.threads is not None else []),
    ]  # fmt: skip
    measured: dict[str, dict] = {}
    for what in args.measure:
        runs = [common.run_child([__file__, "--_child", what, *forwarded]) for _ in range(args.repeats)]
        measured[what] = {
            "peak_delta_bytes": common.median([r["peak_delta_bytes"] for r in runs]),
            "anon_peak_delta_bytes": common.median([r["anon_peak_delta_bytes"] for r in runs]),
            "seconds": common.median([r["seconds"] for r in runs]),
            "runs": runs,
        }
    first = measured["autos"]["runs"][0]
    param_bytes = first["param_bytes"]
    for entry in measured.values():
        entry["peak_over_model"] = entry["peak_delta_bytes"] / param_bytes
        entry["anon_peak_over_model"] = entry["anon_peak_delta_bytes"] / param_bytes
    autos_mb = measured["autos"]["peak_delta_bytes"] / common.MB
    results = {
        "model": args.model,
        "prunable_weights": first["prunable_weights"],
        "param_bytes": param_bytes,
        "autos_peak_delta_mb": autos_mb,
        "autos_peak_over_model": measured["autos"]["peak_over_model"],
        "peak_rss_exact": all(r["exact_peak"] for m in measured.values() for r in m["runs"]),
        "measurements": measured,
    }
    target = common.target_entry(
        f"AutoS scoring's peak RSS increase <= {args.target_mb:.0f} MB beyond the loaded model",
        autos_mb,
        args.target_mb,
        "MB",
        higher_is_better=False,
    )
    mb = common.MB
    rows = [["model parameters", "", param_bytes / mb, "", 1.0]]
    for what, entry in measured.items():
        rows.append(
            [what, entry["seconds"], entry["peak_delta_bytes"] / mb, entry["anon_peak_delta_bytes"] / mb,
             entry["peak_over_model"]]
        )
    rows.append(["target (autos)", "", args.target_mb, "", args.target_mb * mb / param_bytes])
    table = common.markdown_table(
        ["measurement (fresh process)", "seconds", "peak RSS increase (MB)", "private peak (MB)", "x model params"],
        rows,
    )
    table += (
        f"\n\n{args.model}: {first['prunable_weights']:,} prunable weights, {param_bytes / mb:.1f} MB of parameters; "
        f"one batch of {args.batch_size}x3x{args.image_size}x{args.image_size} random images."
    )
    return common.report("autos_memory", vars(args), results, target, table, args.output)


if __name__ == "__main__":
    main()
