"""Scoring throughput of the default AutoS predictor, end to end, against the paper's ResNet-18 predictor.

Measures weights per second of ``compute_scores(model, AutoSCriterion(predictor=AutoSModel(AutoSConfig())), ...)``
on a freshly initialized timm model (default ``resnet18``): the initial gradient ``g0`` over one batch of random
images, the per-tensor feature matrices and the MLP prediction, everything the ``autos`` criterion does. The same
run times the paper's predictor (``architecture="paper_resnet18"``) on a sample of feature rows, so the ratio of the
two is taken under the same machine load. Untrained predictors score exactly as fast as trained ones.

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


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    common.apply_threads(args.threads)
    import timm

    import autosparse_hf.criteria.autos as autos_module
    from autosparse_hf import AutoSConfig, AutoSModel, compute_scores, get_prunable_parameters
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

    # --- the default AutoS predictor through the criterion path, with a cheap time split
    predictor = AutoSModel(AutoSConfig())
    criterion = AutoSCriterion(predictor=predictor, num_batches=1)
    split: dict[str, float] = {}
    # The criterion's three stages, timed by wrapping what ``AutoSCriterion.score`` calls (this process only).
    # If the criterion stops calling one of them, that part of the split reads 0 and lands in "other".
    wrappers = [
        (common.wrap_timed, autos_module, "compute_initial_features", "gradient"),
        (common.wrap_timed_iterator, autos_module, "iter_feature_matrices", "feature_matrix"),
        (common.wrap_timed, criterion.model, "predict", "prediction"),
    ]
    undo = [wrap(owner, name, split, key) for wrap, owner, name, key in wrappers if hasattr(owner, name)]
    runs = []
    try:
        for i in range(args.warmup + args.repeats):
            split.clear()
            start = time.perf_counter()
            scores = compute_scores(model, criterion, dataloader=batches, sparsity=0.9)
            seconds = time.perf_counter() - start
            if i >= args.warmup:
                parts = {k: split.get(k, 0.0) for k in ("gradient", "feature_matrix", "prediction")}
                runs.append({"seconds": seconds, **{f"{k}_s": v for k, v in parts.items()}})
                runs[-1]["other_s"] = max(seconds - sum(parts.values()), 0.0)
    finally:
        for fn in undo:
            fn()
    assert sum(s.numel() for s in scores.values()) == numel
    autos_seconds = common.median([r["seconds"] for r in runs])
    keys = ("gradient_s", "feature_matrix_s", "prediction_s", "other_s")
    autos_split = {k: common.median([r[k] for r in runs]) for k in keys}
    autos_rate = numel / autos_seconds
    autos_prediction_rate = numel / autos_split["prediction_s"] if autos_split["prediction_s"] > 0 else None

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
            "seconds_min": min(r["seconds"] for r in runs),
            "weights_per_s": autos_rate,
            "prediction_weights_per_s": autos_prediction_rate,
            "split_median": autos_split,
            "runs": runs,
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
    rows = [
        ["AutoS mlp, end to end", numel, autos_seconds, autos_rate, autos_seconds],
        ["  of which g0 (1 batch)", numel, autos_split["gradient_s"], "", ""],
        ["  of which feature matrices", numel, autos_split["feature_matrix_s"], "", ""],
        ["  of which prediction", numel, autos_split["prediction_s"], autos_prediction_rate, ""],
        ["  of which other (state, checks)", numel, autos_split["other_s"], "", ""],
        ["paper_resnet18, prediction only", len(sample), paper_seconds, paper_rate, numel / paper_rate],
        ["ratio AutoS mlp / paper_resnet18", "", "", results["ratio_autos_over_paper"], ""],
        ["target", numel, numel / args.target_weights_per_s, args.target_weights_per_s, numel / args.target_weights_per_s],
    ]
    table = common.markdown_table(
        ["what", "weights timed", "seconds (median)", "weights/s", f"whole {args.model} (s)"], rows
    )
    return common.report("scoring_throughput", vars(args), results, target, table, args.output)


if __name__ == "__main__":
    main()
