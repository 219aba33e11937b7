"""Prune a model at initialization with several criteria and sparsities, train each with one recipe, compare.

    accelerate launch recipes/prune.py                                 # LeNet-300-100 / MNIST, five criteria, 90%
    accelerate launch recipes/prune.py --config recipes/configs/prune_lenet.yaml
    python recipes/prune.py --criteria snip synflow --sparsities 0.9 0.98 --seeds 1 2 3

Writes results.csv, results.md (mean ± std test accuracy over seeds) and layers.md (per-layer densities).
"""

# Only the argument dataclasses at the top: the library's runners load in main().
from autosparse_hf.cli import parse_recipe_args
from autosparse_hf.study.arguments import PaIGridConfig
from autosparse_hf.training import TrainRecipe

# The recipe's argument dataclasses, in --help order (tests/recipes build its parser from them).
ARGUMENTS = (PaIGridConfig, TrainRecipe)


def main() -> None:
    config, recipe = parse_recipe_args(ARGUMENTS)
    from autosparse_hf.study.grid import markdown_table, run_pai_grid, summarize

    rows = run_pai_grid(config, recipe)

    print(markdown_table(summarize(rows)))
    print(f"\nwritten to {config.output_dir}")


if __name__ == "__main__":
    main()
