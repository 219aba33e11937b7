"""Scoring throughput of AutoS predictors, end to end, against the paper's ResNet-18 predictor.

Measures weights per second of ``compute_scores(model, AutoSCriterion(predictor=AutoSModel(AutoSConfig())), ...)``
on a freshly initialized timm model (default ``resnet18``): the initial gradient ``g0`` over one batch of random
images, the per-tensor feature statistics and feature rows, and the MLP prediction, everything the ``autos``
criterion does for a per-weight predictor; sequentially (the default) with a time split, and with the background
prefetch of the next tensor's statistics. It also times the two predictors that rank inside learned layer budgets
without per-weight prediction: SNIP's ``|w0 g0|`` inside tensors, and iterative SynFlow inside them (the library's
default; 100 rounds, one run). The same run times the paper's predictor (``architecture="paper_resnet18"``) on a sample
of feature rows, so the ratios are taken under the same machine load. Untrained predictors score exactly as fast
as trained ones. The target applies to the per-weight MLP path.

Target: the whole ResNet-18 (11.2M prunable weights) in <= 2 s, i.e. >= 5.6M weights/s end to end.

    python benchmarks/scoring_throughput.py [--model resnet18] [--repeats 3] [--paper_sample 1024]
"""

from __future__ import annotations

import argparse
import time

import _common as common
import torch

TARGET_WEIGHTS_PER_S = 5.6e6  # 11.2M weights (ResNet-18) in 2 s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_scoring_model_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3, help="Timed end-to-end scorings (median reported).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed end-to-end scorings first.")
    parser.add_argument("--paper_sample", type=int, default=1024, help="Feature rows the paper predictor scores.")
    parser.add_argument("--paper_batch_size", type=int, default=256, help="Rows per paper-predictor forward pass.")
    parser.add_argument("--paper_repeats", type=int, default=1, help="Timed paper-predictor passes (median).")
    parser.add_argument("--target_weights_per_s", type=float, default=TARGET_WEIGHTS_PER_S, help="Target rate.")
    parser.add_argument("--seed", type=int, default=0)
    common.add_threads_argument(parser)
    parser.add_argument("--output", default=common.default_output("scoring_throughput"), help="JSON result file.")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.paper_repeats < 1 or args.paper_sample < 1 or args.warmup < 0:
        parser.error("--repeats, --paper_repeats and --paper_sample must be >= 1, --warmup >= 0")
    return args


def feature_sample(model: torch.nn.Module, batches: list, rows: int, feature_set: str) -> torch.Tensor:
    """``rows`` feature vectors of ``model``'s weights, drawn from its first tensors (values do not affect speed)."""
    from autosparse_hf import compute_initial_features
    from autosparse_hf.features import iter_feature_matrices

    features = compute_initial_features(model, batches, 1)
    parts, have = [], 0
    for _, matrix in iter_feature_matrices(features, feature_set):
        take = min(rows - have, matrix.shape[0])
        parts.append(matrix[torch.randperm(matrix.shape[0])[:take]])
        have += take
        if have >= rows:
            break
    return torch.cat(parts)


def time_scoring(
    model: torch.nn.Module, batches: list, criterion: object, args: argparse.Namespace, split: bool, numel: int
) -> list[dict[str, float]]:
    """``args.warmup`` untimed then ``args.repeats`` timed ``compute_scores`` runs of ``criterion``.

    With ``split``, each run also reports where its time went, by wrapping what ``AutoSCriterion.score`` calls (in
    this process only): ``compute_initial_features`` (g0), ``LayerFeatureColumns.__init__`` (per-tensor statistics),
    ``LayerFeatureColumns.rows`` (feature rows), the predictor's ``predict`` / ``predict_folded``; the rest is "other". Only meaningful
    without prefetch (the statistics then run on the calling thread, so the parts add up to the total). If the
    criterion stops calling one of them, that part reads 0 and lands in "other".
    """
    import autosparse_hf.criteria.autos as autos_module
    from autosparse_hf import compute_scores
    from autosparse_hf.features import LayerFeatureColumns

    parts = ("gradient", "feature_statistics", "feature_rows", "prediction")
    store: dict[str, float] = {}
    undo = []
    if split:
        wrappers = [
            (autos_module, "compute_initial_features", "gradient"),
            (LayerFeatureColumns, "__init__", "feature_statistics"),
            (LayerFeatureColumns, "rows", "feature_rows"),
            (criterion.model, "predict", "prediction"),
            (criterion.model, "predict_folded", "prediction"),
        ]
        undo = [common.wrap_timed(owner, name, store, key) for owner, name, key in wrappers]
    runs = []
    try:
        for i in range(args.warmup + args.repeats):
            store.clear()
            start = time.perf_counter()
            scores = compute_scores(model, criterion, dataloader=batches, sparsity=0.9)
            seconds = time.perf_counter() - start
            if i >= args.warmup:
                run = {"seconds": seconds}
                if split:
                    run.update({f"{k}_s": store.get(k, 0.0) for k in parts})
                    run["other_s"] = max(seconds - sum(store.get(k, 0.0) for k in parts), 0.0)
                runs.append(run)
    finally:
        for fn in undo:
            fn()
    assert sum(s.numel() for s in scores.values()) == numel
    return runs


def time_synflow_passes(model: torch.nn.Module, batches: list, rounds: int) -> float:
    """Seconds of ``rounds`` SynFlow forward/backward passes alone (:func:`_common.synflow_passes`)."""
    run = common.synflow_passes(model, batches[0], rounds)
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    import timm

    from autosparse_hf import AutoSConfig, AutoSModel, get_criterion, get_prunable_parameters
    from autosparse_hf.criteria.autos import AutoSCriterion

    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
    params = get_prunable_parameters(model)
    numel = sum(p.param.numel() for p in params.values())
    g = torch.Generator().manual_seed(args.seed)
    batches = [
        {
            "pixel_values": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g),
            "labels": torch.randint(0, args.num_classes, (args.batch_size,), generator=g),
        }
    ]

    # --- a per-weight AutoS predictor (MLP, default features) through the criterion path, twice: with the
    # background prefetch of the next tensor's feature statistics (the criterion's default), and sequentially with
    # a time split (sequential, so the parts add up to the total).
    predictor = AutoSModel(AutoSConfig())
    runs = {
        "prefetch": time_scoring(
            model, batches, AutoSCriterion(predictor=predictor, num_batches=1, prefetch=True), args, split=False,
            numel=numel,
        ),
        "sequential": time_scoring(
            model, batches, AutoSCriterion(predictor=predictor, num_batches=1, prefetch=False), args, split=True,
            numel=numel,
        ),
    }
    autos_seconds = min(common.median([r["seconds"] for r in rs]) for rs in runs.values())
    autos_mode = min(runs, key=lambda k: common.median([r["seconds"] for r in runs[k]]))
    split_keys = ("gradient_s", "feature_statistics_s", "feature_rows_s", "prediction_s", "other_s")
    autos_split = {k: common.median([r[k] for r in runs["sequential"]]) for k in split_keys}
    autos_rate = numel / autos_seconds
    autos_prediction_rate = numel / autos_split["prediction_s"] if autos_split["prediction_s"] > 0 else None
    # --- SNIP inside learned layer budgets (budgets="learned"): the scoring is SNIP's |w0 g0| on one batch; the
    # budgets act at selection time, so the criterion alone is what is timed.
    default_runs = time_scoring(model, batches, get_criterion("snip"), args, split=False, numel=numel)
    default_seconds = common.median([r["seconds"] for r in default_runs])
    # --- the library's default recipe: iterative SynFlow (100 rounds) inside the learned budgets. Without a trained
    # budget model this times SynFlow's 100 rounds with a global split, the same work. Slow by nature (100
    # forward/backward passes and selections): one untimed-warm-up-free run.
    one_run = argparse.Namespace(**{**vars(args), "warmup": 0, "repeats": 1})
    synflow_runs = time_scoring(model, batches, get_criterion("synflow"), one_run, split=False, numel=numel)
    synflow_seconds = synflow_runs[0]["seconds"]
    synflow_rounds = get_criterion("synflow").rounds
    synflow_passes_seconds = time_synflow_passes(model, batches, synflow_rounds)

    # --- the paper's predictor on a sample of rows, same process, same load
    torch.manual_seed(args.seed)
    paper = AutoSModel(AutoSConfig(architecture="paper_resnet18", feature_set="paper"))
    sample = feature_sample(model, batches, args.paper_sample, "paper")
    paper.predict(sample[: min(len(sample), args.paper_batch_size)], batch_size=args.paper_batch_size)  # warm-up
    paper_times = []
    for _ in range(args.paper_repeats):
        start = time.perf_counter()
        paper.predict(sample, batch_size=args.paper_batch_size)
        paper_times.append(time.perf_counter() - start)
    paper_seconds = common.median(paper_times)
    paper_rate = len(sample) / paper_seconds

    results = {
        "model": args.model,
        "prunable_weights": numel,
        "prunable_tensors": len(params),
        "autos": {
            "architecture": "mlp",
            "feature_set": predictor.config.feature_set,
            "seconds_median": autos_seconds,
            "mode": autos_mode,
            "seconds_median_by_mode": {k: common.median([r["seconds"] for r in v]) for k, v in runs.items()},
            "weights_per_s": autos_rate,
            "prediction_weights_per_s": autos_prediction_rate,
            "split_median": autos_split,
            "runs": runs,
        },
        "autos_synflow_inside": {
            "within_layer": "synflow",
            "seconds": synflow_seconds,
            "weights_per_s": numel / synflow_seconds,
            "rounds": synflow_rounds,
            # The issue-14 yardstick: SynFlow scoring against its forward/backward passes alone (target <= 1.5).
            "passes_only_seconds": synflow_passes_seconds,
            "ratio_to_passes_only": synflow_seconds / synflow_passes_seconds,
        },
        "autos_default": {
            "within_layer": "snip",
            "seconds_median": default_seconds,
            "weights_per_s": numel / default_seconds,
            "runs": default_runs,
        },
        "paper_resnet18": {
            "sample_rows": len(sample),
            "batch_size": args.paper_batch_size,
            "seconds_median": paper_seconds,
            "weights_per_s": paper_rate,
            "extrapolated_whole_model_s": numel / paper_rate,
        },
        # Speed-up of the default predictor over the paper's, end to end against prediction only (the paper's
        # end-to-end time would only be longer), and prediction against prediction.
        "ratio_autos_over_paper": autos_rate / paper_rate,
        "ratio_prediction_over_paper": autos_prediction_rate / paper_rate if autos_prediction_rate else None,
    }
    target = common.target_entry(
        f"whole model scored end to end at >= {args.target_weights_per_s / 1e6:.1f}M weights/s "
        f"(ResNet-18's 11.2M weights in <= 2 s)",
        autos_rate,
        args.target_weights_per_s,
        "weights/s",
        higher_is_better=True,
    )
    by_mode = results["autos"]["seconds_median_by_mode"]
    rows = [
        ["AutoS mlp (per-weight ranking), end to end, best mode", numel, autos_seconds, autos_rate, autos_seconds],
        ["  sequential (prefetch=False, the criterion's default)", numel, by_mode["sequential"],
         numel / by_mode["sequential"], ""],
        ["  with prefetch=True", numel, by_mode["prefetch"], numel / by_mode["prefetch"], ""],
        ["    of which g0 (1 batch)", numel, autos_split["gradient_s"], "", ""],
        ["    of which feature statistics (scales, ranks, unit norms)", numel, autos_split["feature_statistics_s"], "", ""],
        ["    of which feature rows", numel, autos_split["feature_rows_s"], "", ""],
        ["    of which prediction", numel, autos_split["prediction_s"], autos_prediction_rate, ""],
        ["    of which other (state, checks)", numel, autos_split["other_s"], "", ""],
        ["AutoS, learned budgets + SNIP inside tensors", numel, default_seconds, numel / default_seconds,
         default_seconds],
        ["AutoS default, learned budgets + SynFlow inside (100 rounds, 1 run)", numel, synflow_seconds,
         numel / synflow_seconds, synflow_seconds],
        [f"  its {synflow_rounds} forward/backward passes alone (ratio {synflow_seconds / synflow_passes_seconds:.2f})",
         numel, synflow_passes_seconds, "", synflow_passes_seconds],
        ["paper_resnet18, prediction only", len(sample), paper_seconds, paper_rate, numel / paper_rate],
        ["ratio AutoS mlp / paper_resnet18", "", "", results["ratio_autos_over_paper"], ""],
        ["target", numel, numel / args.target_weights_per_s, args.target_weights_per_s, numel / args.target_weights_per_s],
    ]  # fmt: skip
    table = common.markdown_table(
        ["what", "weights timed", "seconds (median)", "weights/s", f"whole {args.model} (s)"], rows
    )
    return common.report("scoring_throughput", vars(args), results, target, table, args.output)


if __name__ == "__main__":
    main()
