"""Quality benchmark: methods x sparsities x seeds x targets with one recipe; resumable.

    python recipes/benchmark.py --config recipes/configs/benchmark_indist.yaml
    python recipes/benchmark.py --config recipes/configs/benchmark_indist.yaml --only lenet-mnist --seeds 1 2 3 4 5

Needs the IRP source run and predictor named in the config (the defaults are what recipes/autosparse.py writes).
Writes per target: grid results (CSV, Markdown), per-layer densities, accuracy.png; and report.md for all targets.
"""

import argparse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", required=True, metavar="FILE.yaml", help="Benchmark YAML (recipes/configs/benchmark_*.yaml)."
    )
    parser.add_argument("--only", nargs="*", help="Run only these target names.")
    parser.add_argument("--seeds", nargs="*", type=int, help="Override the seeds of every target.")
    parser.add_argument("--output_dir", help="Override the output folder.")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    # The library loads after parsing: --help stays fast.
    from autosparse_hf.study.benchmark import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig.from_yaml(args.config)
    if args.seeds:
        config.seeds = args.seeds
        for target in config.targets:
            target.seeds = None
    if args.output_dir:
        config.output_dir = args.output_dir
    result = run_benchmark(config, only=args.only)
    print(result["report"])


if __name__ == "__main__":
    main()
