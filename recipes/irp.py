"""Iterative rewind pruning (IRP) on one model and task; writes the surviving-score dataset.

    accelerate launch recipes/irp.py                                    # LeNet-300-100 / MNIST, 20 cycles to 99%
    accelerate launch recipes/irp.py --config recipes/configs/irp_lenet_mnist.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/irp.py --cycles 5 --output_dir outputs/irp-ddp

Outputs in {output_dir}/irp: scores/ (datasets.save_to_disk + README card), scores.parquet, final_mask/,
cycles.csv/.md/.png (the lottery-ticket accuracy-versus-sparsity curve), irp_run.json, irp_record.safetensors.
A killed run resumes from its last cycle checkpoint when started again with the same arguments.
"""

# Only the argument dataclasses at the top (they import little): --help stays fast; the library loads in main().
from autosparse_hf.cli import parse_recipe_args
from autosparse_hf.irp.arguments import IRPRunArguments
from autosparse_hf.irp.config import IRPConfig
from autosparse_hf.training import TrainRecipe

# The recipe's argument dataclasses, in --help order (tests/recipes build its parser from them).
ARGUMENTS = (IRPRunArguments, IRPConfig, TrainRecipe)


def main() -> None:
    run, config, recipe = parse_recipe_args(ARGUMENTS)
    from autosparse_hf.irp.runner import run_irp

    irp = run_irp(run, config, recipe)
    from accelerate import PartialState

    if PartialState().is_main_process:
        from autosparse_hf.records.report import cycle_table_markdown

        print(cycle_table_markdown(irp.history))
        print(f"\nscore dataset and report written to {run.output_dir}/irp")


if __name__ == "__main__":
    main()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
