"""Prune a model at initialization with several criteria and sparsities, train each with one recipe, compare.

    accelerate launch recipes/prune.py                                 # LeNet-300-100 / MNIST, five criteria, 90%
    accelerate launch recipes/prune.py --config recipes/configs/prune_lenet.yaml
    python recipes/prune.py --criteria snip synflow --sparsities 0.9 0.98 --seeds 1 2 3

Writes results.csv, results.md (mean ± std test accuracy over seeds) and layers.md (per-layer densities).
"""

from autosparse_hf.cli import parse_recipe_args
from autosparse_hf.study.grid import PaIGridConfig, run_pai_grid
from autosparse_hf.training import TrainRecipe


def main() -> None:
    config, recipe = parse_recipe_args([PaIGridConfig, TrainRecipe])
    rows = run_pai_grid(config, recipe)
    from autosparse_hf.study.grid import markdown_table, summarize

    print(markdown_table(summarize(rows)))
    print(f"\nwritten to {config.output_dir}")


if __name__ == "__main__":
    main()
