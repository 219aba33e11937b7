"""Score dataset at ResNet-18 scale: build time, save time, size on disk, peak memory, memory-mapped loading.

Builds a surviving-score dataset with one row per prunable weight of a timm model (default ``resnet18``, 11.7M rows)
with ``autosparse_hf.records.build_score_dataset``, from fake ``InitialFeatures``: the model's real layer contexts
(``autosparse_hf.features.layer_contexts``) with random ``w0``, ``g0`` and ``cycle_pruned``. Reports the build and
``save_score_dataset`` times, the size of the Arrow folder and of the Parquet file, the peak RSS increase during
build and save (the kernel's high-water mark VmHWM, reset before each phase, so Arrow's buffers count), and the
peak RSS increase of ``load_score_dataset`` on the saved folder in a fresh subprocess, against the table's size.
``--rows`` shrinks every tensor proportionally (keeping the layer names, kinds and fans).

Target: loading is memory-mapped: its peak private-memory increase is <= 10% of the table's size. The peak RSS
increase is reported too; it also counts the pages of the memory-mapped files the load touches (the kernel maps
about 64 KB around each record-batch header, one per 1,000 rows), which are shared page cache, not allocations.

    python benchmarks/score_dataset_scale.py [--model resnet18] [--rows N]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import tempfile
import time
from pathlib import Path

import _common as common
import torch

TARGET_LOAD_RATIO = 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="timm model whose layer contexts the rows get.")
    parser.add_argument("--rows", type=int, default=None, help="Rows to build (default: all prunable weights).")
    parser.add_argument("--cycles", type=int, default=20, help="IRP cycles of the fake run.")
    parser.add_argument("--workdir", default=None, help="Where the temporary dataset is written (default: tmp).")
    parser.add_argument("--target_load_ratio", type=float, default=TARGET_LOAD_RATIO, help="Target load RSS / table.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=common.default_output("score_dataset_scale"), help="JSON result file.")
    parser.add_argument("--_load", default=None, help=argparse.SUPPRESS)  # child mode: load a folder, report memory
    return parser.parse_args(argv)


def load_child(path: str) -> None:
    """In a fresh interpreter: the memory increase of ``load_score_dataset(path)``, after the imports.

    Reports the peak RSS increase (VmHWM: private memory and the touched pages of the memory-mapped files), the peak
    private (anonymous) memory increase, sampled, and the file-backed pages mapped at the end.
    """
    from autosparse_hf.records import load_score_dataset

    before = common.rss_parts_bytes()
    with common.PeakRSS() as peak, common.AnonPeakSampler() as anon:
        start = time.perf_counter()
        dataset = load_score_dataset(path)
        num_rows = dataset.num_rows
        seconds = time.perf_counter() - start
    after = common.rss_parts_bytes()
    common.child_reply(
        {
            "num_rows": num_rows,
            "seconds": seconds,
            "baseline_rss_bytes": peak.baseline_bytes,
            "peak_delta_bytes": peak.delta_bytes,
            "end_delta_bytes": peak.end_bytes - peak.baseline_bytes,
            "anon_peak_delta_bytes": anon.delta_bytes,
            "file_end_delta_bytes": after.get("file", 0) - before.get("file", 0),
            "exact_peak": peak.exact,
            "record_batches": len(dataset.data.to_batches()),
        }
    )


def _shrink(layer, fraction: float):  # noqa: ANN001, ANN202
    """The layer with its output dimension scaled by ``fraction`` (at least 1), other dimensions kept."""
    import math

    out = max(1, round(layer.shape[0] * fraction))
    shape = (out, *layer.shape[1:])
    return dataclasses.replace(layer, numel=math.prod(shape), shape=shape)


def fake_run(model_name: str, rows: int | None, cycles: int, seed: int):  # noqa: ANN201
    """Fake ``InitialFeatures``, ``cycle_pruned`` and run info with the model's real layer contexts."""
    import timm

    from autosparse_hf import InitialFeatures, IRPConfig, get_prunable_parameters
    from autosparse_hf.features import layer_contexts

    model = timm.create_model(model_name, pretrained=False)
    layers = layer_contexts(get_prunable_parameters(model))
    del model
    total = sum(layer.numel for layer in layers)
    if rows is not None and rows < total:
        layers = [_shrink(layer, rows / total) for layer in layers]
    g = torch.Generator().manual_seed(seed)
    weights = {layer.name: torch.randn(layer.shape, generator=g) for layer in layers}
    gradients = {layer.name: torch.randn(layer.shape, generator=g) * 1e-3 for layer in layers}
    cycle_pruned = {
        layer.name: torch.randint(1, cycles + 2, layer.shape, generator=g, dtype=torch.int16) for layer in layers
    }
    kwargs = {}
    if "input_std" in {f.name for f in dataclasses.fields(InitialFeatures)}:
        # Per input unit (input feature or channel), as compute_initial_features records it.
        kwargs["input_std"] = {layer.name: torch.rand(layer.shape[1], generator=g) + 0.5 for layer in layers}
    features = InitialFeatures(weights=weights, gradients=gradients, layers=layers, num_batches=4, **kwargs)
    run_info = {
        "config": IRPConfig(cycles=cycles).to_dict(),
        "identity": {"model": model_name, "task": "synthetic", "seed": seed, "run_id": "benchmark"},
        "counts": [],
        "densities": [],
        "history": [],
        "layers": [layer.to_dict() for layer in layers],
        "feature_num_batches": 4,
    }
    return features, cycle_pruned, run_info, total


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args._load:
        load_child(args._load)
        return None
    import datasets

    from autosparse_hf.records import build_score_dataset, save_score_dataset

    datasets.disable_progress_bars()
    features, cycle_pruned, run_info, model_rows = fake_run(args.model, args.rows, args.cycles, args.seed)
    gc.collect()
    with common.PeakRSS() as build_mem:
        start = time.perf_counter()
        dataset = build_score_dataset(features, cycle_pruned, run_info)
        build_s = time.perf_counter() - start
    rows = dataset.num_rows
    table_bytes = dataset.data.nbytes
    with tempfile.TemporaryDirectory(prefix="bench_scores_", dir=args.workdir) as tmp:
        with common.PeakRSS() as save_mem:
            start = time.perf_counter()
            folder = save_score_dataset(dataset, tmp, run_info)
            save_s = time.perf_counter() - start
        arrow_bytes = common.directory_bytes(folder)
        parquet_bytes = common.directory_bytes(Path(tmp) / "scores.parquet")
        del dataset
        gc.collect()
        load = common.run_child([__file__, "--_load", str(folder)])
    if load["num_rows"] != rows:
        raise RuntimeError(f"loaded {load['num_rows']} rows, built {rows}")
    load_ratio = load["peak_delta_bytes"] / table_bytes
    anon_ratio = load["anon_peak_delta_bytes"] / table_bytes
    results = {
        "model": args.model,
        "rows": rows,
        "model_rows": model_rows,
        "table_bytes": table_bytes,
        "bytes_per_row": table_bytes / rows,
        "build_s": build_s,
        "build_rows_per_s": rows / build_s,
        "build_peak_rss_delta_bytes": build_mem.delta_bytes,
        "build_peak_rss_bytes": build_mem.peak_bytes,
        "build_peak_over_table": build_mem.delta_bytes / table_bytes,
        "save_s": save_s,
        "save_peak_rss_delta_bytes": save_mem.delta_bytes,
        "arrow_folder_bytes": arrow_bytes,
        "parquet_bytes": parquet_bytes,
        "parquet_over_arrow": parquet_bytes / arrow_bytes,
        "load_s": load["seconds"],
        "load_peak_rss_delta_bytes": load["peak_delta_bytes"],
        "load_peak_over_table": load_ratio,
        "load_private_peak_delta_bytes": load["anon_peak_delta_bytes"],
        "load_private_peak_over_table": anon_ratio,
        "load_mapped_file_pages_bytes": load["file_end_delta_bytes"],
        "load_record_batches": load["record_batches"],
        "peak_rss_exact": bool(build_mem.exact and save_mem.exact and load["exact_peak"]),
        "load": load,
    }
    target = common.target_entry(
        f"load_score_dataset is memory-mapped: peak private-memory increase <= {args.target_load_ratio:.0%} of the "
        "table",
        anon_ratio,
        args.target_load_ratio,
        "x table size",
        higher_is_better=False,
    )
    mb = common.MB
    rows_table = [
        ["build_score_dataset", build_s, build_mem.delta_bytes / mb, build_mem.delta_bytes / table_bytes, ""],
        ["save_score_dataset (Arrow + Parquet)", save_s, save_mem.delta_bytes / mb, save_mem.delta_bytes / table_bytes,
         ""],
        ["load_score_dataset (fresh process), peak RSS", load["seconds"], load["peak_delta_bytes"] / mb, load_ratio, ""],
        ["  of which private memory (peak)", "", load["anon_peak_delta_bytes"] / mb, anon_ratio, ""],
        ["  mapped file pages (end)", "", load["file_end_delta_bytes"] / mb, load["file_end_delta_bytes"] / table_bytes,
         ""],
        ["table in memory (Arrow)", "", "", 1.0, table_bytes / mb],
        ["Arrow folder on disk", "", "", arrow_bytes / table_bytes, arrow_bytes / mb],
        ["Parquet file on disk", "", "", parquet_bytes / table_bytes, parquet_bytes / mb],
        ["target: load private peak / table", "", "", args.target_load_ratio, ""],
    ]
    table = common.markdown_table(["what", "seconds", "memory increase (MB)", "x table size", "size (MB)"], rows_table)
    table += (
        f"\n\n{rows:,} rows ({args.model} has {model_rows:,} prunable weights), {table_bytes / rows:.1f} bytes/row, "
        f"{load['record_batches']:,} record batches on disk. Peak RSS counts the touched pages of the memory-mapped "
        "files (shared page cache); private memory is what the loading process allocated."
    )
    return common.report("score_dataset_scale", vars(args), results, target, table, args.output)


if __name__ == "__main__":
    main()
