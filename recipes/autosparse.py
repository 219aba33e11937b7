"""The whole AutoSparse pipeline on the built-in default, resumable stage by stage.

    accelerate launch --num_processes 1 recipes/autosparse.py
    python recipes/autosparse.py --seeds 1 2 3 4 5 --sparsities 0.9 0.95 0.98 0.99 --output_dir outputs/as5

IRP on LeNet-300-100 / MNIST (20 cycles to 99%) -> score dataset -> AutoS predictor -> fresh LeNet-300-100 networks
(seeds 1-3) pruned with AutoS and the five baselines at 90/95/98/99% -> summary.md (table) and accuracy.png.
"""

# Only the argument dataclasses at the top: the library's runners load in main().
from autosparse_hf.cli import parse_recipe_args
from autosparse_hf.irp.config import IRPConfig
from autosparse_hf.study.arguments import PipelineArguments
from autosparse_hf.training import TrainRecipe

# The recipe's argument dataclasses, in --help order (tests/recipes build its parser from them).
ARGUMENTS = (PipelineArguments, IRPConfig, TrainRecipe)


def main() -> None:
    args, irp_config, recipe = parse_recipe_args(ARGUMENTS)
    from autosparse_hf.study.pipeline import run_pipeline

    result = run_pipeline(args, irp_config, recipe)
    print(result["text"])
    print(f"written to {args.output_dir}/summary.md and accuracy.png")


if __name__ == "__main__":
    main()
